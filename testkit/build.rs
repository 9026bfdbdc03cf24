//! Sets `ATELIER_MIGRATIONS_HASH`, a hash of `../migration/src` that names the PostgreSQL
//! template database (`src/pg.rs`): a changed migration gets a fresh template.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../migration/src");
    let mut files: Vec<_> = std::fs::read_dir("../migration/src")
        .map(|dir| dir.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut hasher = std::hash::DefaultHasher::new();
    for f in &files {
        std::hash::Hash::hash(&f.file_name(), &mut hasher);
        std::hash::Hash::hash(&std::fs::read(f).unwrap_or_default(), &mut hasher);
    }
    println!(
        "cargo::rustc-env=ATELIER_MIGRATIONS_HASH={:016x}",
        std::hash::Hasher::finish(&hasher)
    );
}
