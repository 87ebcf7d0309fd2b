//! Reading the root spec and, transitively, every file it imports, into one
//! [`Sources`] map; each file is parsed once (imports are resolved relative
//! to the importing file, and a file imported twice is read once).

use crate::diagnostics::Diagnostic;
use crate::sources::Sources;
use crate::syntax::{parse_at, FileAst};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Imports nested deeper than this are reported (a chain of files this long
/// is a mistake, and the bound keeps loading finite).
const MAX_IMPORT_DEPTH: usize = 32;
/// Imported files larger than this are refused.
const MAX_IMPORT_BYTES: u64 = 16 << 20;

/// The parsed files of one check, in the order of `Sources` (file 0 is the root).
pub struct Loaded {
    pub sources: Sources,
    /// `files[i]` is the AST of `sources.files()[i]`, or `None` if it did not parse.
    pub files: Vec<Option<FileAst>>,
    pub diags: Vec<Diagnostic>,
    /// Import paths (as written) that could not be read.
    pub failed: Vec<String>,
}

/// Loads `text` (the root spec, read from `path` if it came from a file) and
/// its imports.
pub fn load(display: &str, path: Option<&Path>, text: &str) -> Loaded {
    let mut loaded = Loaded {
        sources: Sources::default(),
        files: Vec::new(),
        diags: Vec::new(),
        failed: Vec::new(),
    };
    let root_path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(display));
    let mut seen: HashMap<PathBuf, usize> = HashMap::new();
    if let Some(p) = path {
        seen.insert(canonical(p), 0);
    }
    add(
        &mut loaded,
        &root_path,
        display.to_string(),
        text.to_string(),
    );
    let mut queue: Vec<(usize, usize)> = vec![(0, 0)];
    while let Some((index, depth)) = queue.pop() {
        let imports = match &loaded.files[index] {
            Some(ast) => ast.imports.clone(),
            None => continue,
        };
        for import in imports {
            if path.is_none() {
                loaded.failed.push(import.path.clone());
                loaded.diags.push(
                    Diagnostic::error("E0019", format!("cannot import `{}` here", import.path))
                        .with_label(
                            import.path_span,
                            "imports are resolved relative to the spec's file",
                        )
                        .with_help("check the spec from a file (`cnnc build path/to/model.cnn`)"),
                );
                continue;
            }
            let importer = loaded.sources.files()[index].path.clone();
            let dir = importer.parent().map(Path::to_path_buf).unwrap_or_default();
            let target = normalize(&dir.join(&import.path));
            let key = canonical(&target);
            if seen.contains_key(&key) {
                continue;
            }
            if depth + 1 > MAX_IMPORT_DEPTH {
                loaded.failed.push(import.path.clone());
                loaded.diags.push(
                    Diagnostic::error(
                        "E0019",
                        format!("imports nested more than {MAX_IMPORT_DEPTH} deep"),
                    )
                    .with_label(import.path_span, "this import is too deep")
                    .with_help("import the files you need directly from the model's file"),
                );
                continue;
            }
            // Only regular files of a sane size: not `/dev/zero`, a pipe or a directory.
            let checked = match std::fs::metadata(&target) {
                Ok(m) if !m.is_file() => Err("not a regular file".to_string()),
                Ok(m) if m.len() > MAX_IMPORT_BYTES => {
                    Err(format!("larger than {} MiB", MAX_IMPORT_BYTES >> 20))
                }
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err("no such file".to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            if let Err(reason) = checked {
                loaded.failed.push(import.path.clone());
                loaded.diags.push(
                    Diagnostic::error("E0019", format!("cannot import `{}`: {reason}", import.path))
                        .with_label(import.path_span, format!("looked for {}", target.display()))
                        .with_help("import paths are relative to the importing file, e.g. `import \"../zoo/resnet50.cnn\"`"),
                );
                continue;
            }
            match std::fs::read_to_string(&target) {
                Ok(text) => {
                    let display = target.display().to_string();
                    let i = add(&mut loaded, &target, display, text);
                    seen.insert(key, i);
                    queue.push((i, depth + 1));
                }
                Err(e) => {
                    let reason = match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".to_string(),
                        std::io::ErrorKind::InvalidData => "the file is not UTF-8 text".to_string(),
                        _ => e.to_string(),
                    };
                    loaded.failed.push(import.path.clone());
                    loaded.diags.push(
                        Diagnostic::error("E0019", format!("cannot import `{}`: {reason}", import.path))
                            .with_label(import.path_span, format!("looked for {}", target.display()))
                            .with_help("import paths are relative to the importing file, e.g. `import \"../zoo/resnet50.cnn\"`"),
                    );
                }
            }
        }
    }
    loaded
}

/// Adds a file to the map and parses it.
fn add(loaded: &mut Loaded, path: &Path, display: String, text: String) -> usize {
    let index = loaded.sources.add(path, display, text);
    let file = &loaded.sources.files()[index];
    match parse_at(&file.text, file.base) {
        Ok(ast) => loaded.files.push(Some(ast)),
        Err(d) => {
            loaded.diags.push(d);
            loaded.files.push(None);
        }
    }
    index
}

/// `a/b/../c` -> `a/c`, without touching the file system (for messages).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        return PathBuf::from(".");
    }
    out.iter().collect()
}

fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}
