//! Links the kernel with the project's linker script as a self-relocating PIE.

fn main() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../linker/tidepool.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=src/entry.S");
    println!("cargo:rerun-if-changed=src/vectors.S");
    println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    // A position-independent executable whose relative relocations the entry
    // code applies itself: the loader chooses where the image runs.
    println!("cargo:rustc-link-arg-bins=-pie");
    println!("cargo:rustc-link-arg-bins=--no-dynamic-linker");
    println!("cargo:rustc-link-arg-bins=-znotext");
    println!("cargo:rustc-link-arg-bins=-zmax-page-size=4096");
}
