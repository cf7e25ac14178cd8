/*
 * tidepool entry: the Linux arm64 Image header and the code that runs before
 * any Rust code.
 *
 * Entered per the Linux arm64 boot protocol: MMU off, x0 = physical address
 * of the device tree (or 0 / garbage when a loader passes none), at EL2 (bare
 * QEMU with virtualization=on) or EL1 (under Xen, or bare without EL2).
 * Before Rust runs: drop to EL1, enable FP/SIMD (Rust uses SIMD registers for
 * memcpy and formatting), install the vectors, set both stacks, clear BSS and
 * apply the image's relative relocations for the address it was loaded at.
 */

/* Load the run-time address of a symbol (PC-relative, +-4 GiB). */
.macro adr_l reg, sym
    adrp    \reg, \sym
    add     \reg, \reg, :lo12:\sym
.endm

.equ R_AARCH64_RELATIVE, 1027
.equ CPACR_EL1_FPEN, (3 << 20)
.equ HCR_EL2_RW, (1 << 31)
.equ CNTHCTL_EL2_EL1PCTEN_EL1PCEN, 3
.equ CPTR_EL2_RES1, 0x33ff
.equ ICC_SRE_EL2_SRE_ENABLE, 0x9
.equ SCTLR_EL1_RES1, 0x30d00800
.equ SPSR_EL1H_DAIF_MASKED, 0x3c5

.section .text.head, "ax"
.global _start
_start:
    /* Linux arm64 Image header (Documentation/arch/arm64/booting.rst). */
    b       primary_entry           /* code0 */
    .long   0                       /* code1 */
    .quad   0x80000                 /* text_offset: loaders place the image at a 2 MiB boundary + this */
    .quad   __image_size            /* image_size: bytes the loader must reserve, BSS and stacks included */
    .quad   0xa                     /* flags: little-endian, 4 KiB pages, may be placed anywhere in RAM */
    .quad   0                       /* res2 */
    .quad   0                       /* res3 */
    .quad   0                       /* res4 */
    .ascii  "ARM\x64"               /* magic */
    .long   0                       /* res5: no PE/COFF header */

.section .text.boot, "ax"
primary_entry:
    mov     x19, x0                 /* device tree, kept for Rust */
    mrs     x20, CurrentEL
    ubfx    x20, x20, #2, #2        /* exception level at entry, reported in the banner */
    cmp     x20, #2
    b.ne    at_el1

    /* EL2 with no hypervisor of ours: configure a plain AArch64 EL1 and drop to it. */
    mov     x0, #HCR_EL2_RW
    msr     hcr_el2, x0
    mov     x0, #CPTR_EL2_RES1      /* no FP/SIMD traps to EL2 */
    msr     cptr_el2, x0
    mrs     x0, cnthctl_el2
    orr     x0, x0, #CNTHCTL_EL2_EL1PCTEN_EL1PCEN
    msr     cnthctl_el2, x0
    msr     cntvoff_el2, xzr
    msr     vttbr_el2, xzr
    mrs     x0, id_aa64pfr0_el1
    ubfx    x0, x0, #24, #4         /* GIC system-register interface implemented? */
    cbz     x0, 1f
    mrs     x0, S3_4_C12_C9_5       /* ICC_SRE_EL2 */
    mov     x1, #ICC_SRE_EL2_SRE_ENABLE
    orr     x0, x0, x1
    msr     S3_4_C12_C9_5, x0       /* EL1 may use ICC_* system registers */
    isb
1:  ldr     x0, =SCTLR_EL1_RES1
    msr     sctlr_el1, x0
    mov     x0, #SPSR_EL1H_DAIF_MASKED
    msr     spsr_el2, x0
    adr_l   x0, at_el1
    msr     elr_el2, x0
    eret

at_el1:
    ldr     x0, =SCTLR_EL1_RES1     /* MMU and caches off, no alignment checks */
    msr     sctlr_el1, x0
    mov     x0, #CPACR_EL1_FPEN     /* FP/SIMD at EL1 without traps */
    msr     cpacr_el1, x0
    adr_l   x0, exception_vectors
    msr     vbar_el1, x0
    isb

    /*
     * Two stacks: exceptions run on SP_EL1 (their own stack), everything else
     * on SP_EL0, so a kernel stack overflow into its guard page still gets a
     * fault report instead of a recursive fault.
     */
    adr_l   x0, __exception_stack_top
    mov     sp, x0
    msr     spsel, #0
    adr_l   x0, __boot_stack_top
    mov     sp, x0

    /* Clear BSS (16-byte aligned at both ends by the linker script). */
    adr_l   x0, __bss_start
    adr_l   x1, __bss_end
2:  cmp     x0, x1
    b.hs    3f
    stp     xzr, xzr, [x0], #16
    b       2b

    /* Apply R_AARCH64_RELATIVE relocations: *(base + offset) = base + addend. */
3:  adr_l   x21, __image_start      /* where the loader put us */
    adr_l   x0, __rela_start
    adr_l   x1, __rela_end
4:  cmp     x0, x1
    b.hs    6f
    ldp     x2, x3, [x0], #16       /* r_offset, r_info */
    ldr     x4, [x0], #8            /* r_addend */
    cmp     w3, #R_AARCH64_RELATIVE
    b.ne    4b                      /* xtask rejects images with any other kind */
    add     x4, x4, x21
    str     x4, [x2, x21]
    b       4b

6:  mov     x0, x19
    mov     x1, x20
    mov     x2, x21
    bl      tidepool_entry          /* never returns */
7:  wfi
    b       7b
