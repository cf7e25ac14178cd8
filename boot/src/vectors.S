/*
 * Exception vectors. Each entry saves x0/x1, puts its kind in x0 and joins a
 * common path that saves the whole register file as a `TrapFrame` (see
 * kernel/core/src/arch/aarch64/exception.rs) and calls the Rust handler,
 * which returns only for exceptions it has dealt with (interrupts).
 *
 * Below the frame go FPCR, FPSR and q0-q31: the handler is compiled Rust,
 * which uses SIMD registers freely (copies, formatting), and an interrupt
 * returns to code that may have been in the middle of using them.
 *
 * The kernel runs on SP_EL0, so the group "current EL with SP_EL0" is the
 * ordinary one; "current EL with SP_ELx" means a fault while handling an
 * exception, and the lower-EL groups cannot happen (no EL0 code).
 */

.equ FRAME_SIZE, 288
.equ FP_FRAME_SIZE, 528         /* FPCR and FPSR, then q0-q31 */

.macro vector kind
    .balign 0x80
    sub     sp, sp, #FRAME_SIZE
    stp     x0, x1, [sp, #0]
    mov     x0, #\kind
    b       save_and_handle
.endm

.section .text, "ax"
.balign 0x800
.global exception_vectors
exception_vectors:
    /* Current EL with SP_EL0: kinds 0-3 (sync, irq, fiq, serror) */
    vector 0
    vector 1
    vector 2
    vector 3
    /* Current EL with SP_ELx: kinds 4-7 */
    vector 4
    vector 5
    vector 6
    vector 7
    /* Lower EL, AArch64: kinds 8-11 */
    vector 8
    vector 9
    vector 10
    vector 11
    /* Lower EL, AArch32: kinds 12-15 */
    vector 12
    vector 13
    vector 14
    vector 15

save_and_handle:
    stp     x2, x3, [sp, #16]
    stp     x4, x5, [sp, #32]
    stp     x6, x7, [sp, #48]
    stp     x8, x9, [sp, #64]
    stp     x10, x11, [sp, #80]
    stp     x12, x13, [sp, #96]
    stp     x14, x15, [sp, #112]
    stp     x16, x17, [sp, #128]
    stp     x18, x19, [sp, #144]
    stp     x20, x21, [sp, #160]
    stp     x22, x23, [sp, #176]
    stp     x24, x25, [sp, #192]
    stp     x26, x27, [sp, #208]
    stp     x28, x29, [sp, #224]
    mrs     x1, sp_el0
    stp     x30, x1, [sp, #240]
    mrs     x1, elr_el1
    mrs     x2, spsr_el1
    stp     x1, x2, [sp, #256]
    mrs     x1, esr_el1
    mrs     x2, far_el1
    stp     x1, x2, [sp, #272]
    sub     sp, sp, #FP_FRAME_SIZE
    stp     q0, q1, [sp, #16]
    stp     q2, q3, [sp, #48]
    stp     q4, q5, [sp, #80]
    stp     q6, q7, [sp, #112]
    stp     q8, q9, [sp, #144]
    stp     q10, q11, [sp, #176]
    stp     q12, q13, [sp, #208]
    stp     q14, q15, [sp, #240]
    stp     q16, q17, [sp, #272]
    stp     q18, q19, [sp, #304]
    stp     q20, q21, [sp, #336]
    stp     q22, q23, [sp, #368]
    stp     q24, q25, [sp, #400]
    stp     q26, q27, [sp, #432]
    stp     q28, q29, [sp, #464]
    stp     q30, q31, [sp, #496]
    mrs     x1, fpcr
    mrs     x2, fpsr
    stp     x1, x2, [sp, #0]
    mov     x1, x0                  /* kind */
    add     x0, sp, #FP_FRAME_SIZE  /* &mut TrapFrame */
    bl      tidepool_exception
    ldp     x1, x2, [sp, #0]
    msr     fpcr, x1
    msr     fpsr, x2
    ldp     q0, q1, [sp, #16]
    ldp     q2, q3, [sp, #48]
    ldp     q4, q5, [sp, #80]
    ldp     q6, q7, [sp, #112]
    ldp     q8, q9, [sp, #144]
    ldp     q10, q11, [sp, #176]
    ldp     q12, q13, [sp, #208]
    ldp     q14, q15, [sp, #240]
    ldp     q16, q17, [sp, #272]
    ldp     q18, q19, [sp, #304]
    ldp     q20, q21, [sp, #336]
    ldp     q22, q23, [sp, #368]
    ldp     q24, q25, [sp, #400]
    ldp     q26, q27, [sp, #432]
    ldp     q28, q29, [sp, #464]
    ldp     q30, q31, [sp, #496]
    add     sp, sp, #FP_FRAME_SIZE
    ldp     x1, x2, [sp, #256]
    msr     elr_el1, x1
    msr     spsr_el1, x2
    ldp     x30, x1, [sp, #240]
    msr     sp_el0, x1
    ldp     x0, x1, [sp, #0]
    ldp     x2, x3, [sp, #16]
    ldp     x4, x5, [sp, #32]
    ldp     x6, x7, [sp, #48]
    ldp     x8, x9, [sp, #64]
    ldp     x10, x11, [sp, #80]
    ldp     x12, x13, [sp, #96]
    ldp     x14, x15, [sp, #112]
    ldp     x16, x17, [sp, #128]
    ldp     x18, x19, [sp, #144]
    ldp     x20, x21, [sp, #160]
    ldp     x22, x23, [sp, #176]
    ldp     x24, x25, [sp, #192]
    ldp     x26, x27, [sp, #208]
    ldp     x28, x29, [sp, #224]
    add     sp, sp, #FRAME_SIZE
    eret
