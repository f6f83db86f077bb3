fn main() {
    // Rebuild when the linker changes: it is an undeclared dependency of this crate.
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let linker = dir.join("bpf-linker");
            if linker.is_file() {
                println!("cargo:rerun-if-changed={}", linker.display());
                break;
            }
        }
    }
}
