//! File mode's source of manifests: every `.yaml`, `.yml` and `.json` file below a
//! directory (recursively, in sorted order), or stdin for `-`. Files are re-read only
//! when their size or modification time changed. A file that stops parsing keeps its
//! previous version in service (with a Problem saying so), so a half-saved edit never
//! takes routes down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use portcullis_config::manifest::parse_documents;
use portcullis_config::{Manifests, Origin, Problem};

/// The manifests could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The directory (or file) given with `--manifests` cannot be read.
    #[error("cannot read manifests from {path}: {error}")]
    Unreadable { path: String, error: std::io::Error },
}

#[derive(Clone)]
struct CachedFile {
    stamp: (Option<SystemTime>, u64),
    /// The file's objects in service, typed once: this version's, or the last version
    /// that parsed cleanly. Typing every unchanged file's documents again was half of a
    /// reload's CPU at 10,000 Ingresses (346 ms, against 82 ms to copy typed objects).
    objects: Manifests,
    /// What went wrong reading or parsing this version.
    problems: Vec<Problem>,
    clean: bool,
}

/// Every manifest file below a root, with its modification time and size.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The manifest files below `root` and their stamps: what [`FileSource::load`] would
/// read, without reading it.
pub fn fingerprint(root: &Path) -> Result<Fingerprint, SourceError> {
    let files = list_files(root).map_err(|error| SourceError::Unreadable {
        path: root.display().to_string(),
        error,
    })?;
    Ok(files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            (p, modified, meta.map_or(0, |m| m.len()))
        })
        .collect())
}

/// Reads manifests from disk, caching parsed files between reloads.
pub struct FileSource {
    root: PathBuf,
    cache: HashMap<PathBuf, CachedFile>,
}

impl FileSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileSource {
            root: root.into(),
            cache: HashMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every manifest file, re-parsing only the changed ones.
    pub fn load(&mut self) -> Result<Manifests, SourceError> {
        let mut manifests = Manifests::default();
        let mut next = HashMap::new();
        for (path, modified, len) in fingerprint(&self.root)? {
            let name = path.display().to_string();
            let stamp = (modified, len);
            // Taken out of the old cache, not cloned: with thousands of Ingresses the
            // copies were a third of a reload's work.
            let cached = match self.cache.remove(&path) {
                Some(c) if c.stamp == stamp => c,
                previous => read_file(&path, &name, stamp, previous.as_ref()),
            };
            manifests.problems.extend(cached.problems.iter().cloned());
            // Objects defined in two files: the first file's copy stays, as when the
            // documents were added in order.
            manifests.merge(cached.objects.clone());
            next.insert(path, cached);
        }
        self.cache = next;
        Ok(manifests)
    }
}

fn read_file(
    path: &Path,
    name: &str,
    stamp: (Option<SystemTime>, u64),
    previous: Option<&CachedFile>,
) -> CachedFile {
    let (documents, problems) = match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse_documents(name, &text),
            Err(_) => (
                Vec::new(),
                vec![Problem::error(None, "", "file is not UTF-8 text").at(Some(origin(name)))],
            ),
        },
        Err(e) => (
            Vec::new(),
            vec![Problem::error(None, "", format!("cannot read file: {e}")).at(Some(origin(name)))],
        ),
    };
    let clean = problems.is_empty();
    match previous {
        Some(previous) if !clean && previous.clean => {
            let mut problems = problems;
            problems.push(
                Problem::warning(
                    None,
                    "",
                    "the previous version of this file stays in service until it parses again",
                )
                .at(Some(origin(name))),
            );
            CachedFile {
                stamp,
                objects: previous.objects.clone(),
                problems,
                clean: false,
            }
        }
        _ => {
            let mut objects = Manifests::default();
            objects.add_documents(name, documents);
            CachedFile {
                stamp,
                objects,
                problems,
                clean,
            }
        }
    }
}

fn origin(name: &str) -> Origin {
    Origin {
        file: name.to_string(),
        line: None,
    }
}

/// Reads manifests from stdin once.
pub fn read_stdin() -> Result<Manifests, SourceError> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|error| {
        SourceError::Unreadable {
            path: "-".into(),
            error,
        }
    })?;
    let mut manifests = Manifests::default();
    manifests.add_text("-", &text);
    Ok(manifests)
}

fn is_manifest(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
}

/// Manifest files below `root` (or `root` itself), sorted. Hidden entries (such as the
/// `..data` links Kubernetes uses in mounted ConfigMaps) are skipped.
pub fn list_files(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root)?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type = std::fs::metadata(&path).map(|m| m.file_type());
            match file_type {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() && is_manifest(&path) => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n";

    #[test]
    fn reloads_from_the_cache_keep_first_copies_and_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let bad = "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: oops}\n";
        std::fs::write(dir.path().join("a.yaml"), format!("{SVC}---\n{bad}")).unwrap();
        // The same Service again, with a port the first copy lacks.
        let again = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 81}]}\n";
        std::fs::write(dir.path().join("b.yaml"), again).unwrap();
        let mut source = FileSource::new(dir.path());
        let check = |m: &Manifests| {
            assert_eq!(m.services.len(), 1, "{:?}", m.problems);
            assert!(m.services[0].value.spec.is_none(), "the first file's copy stays");
            let problems: Vec<String> = m.problems.iter().map(|p| p.to_string()).collect();
            assert_eq!(problems.len(), 2, "{problems:?}");
            assert!(
                problems[0].contains("Service default/b spec.ports"),
                "{problems:?}"
            );
            assert!(problems[0].contains("a.yaml:5"), "{problems:?}");
            assert!(problems[1].contains("defined more than once"), "{problems:?}");
            assert!(problems[1].contains("b.yaml:1"), "{problems:?}");
        };
        check(&source.load().unwrap());
        // Nothing changed: both files come from the cache, typed objects and all.
        check(&source.load().unwrap());
        // The first file changes (its size too, so the change is seen whatever the
        // clock's resolution); the second still comes from the cache. An empty namespace
        // is `default`, so b's copy is still the duplicate.
        let renamed = SVC.replace("{name: a}", "{name: a, namespace: \"\"}");
        std::fs::write(
            dir.path().join("a.yaml"),
            format!("{bad}---\n{renamed}# edited\n"),
        )
        .unwrap();
        let m = source.load().unwrap();
        assert_eq!(m.services.len(), 1);
        let problems: Vec<String> = m.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("a.yaml:1"),
            "the edit was read: {problems:?}"
        );
        assert!(problems[1].contains("defined more than once"), "{problems:?}");
    }

    #[test]
    fn a_broken_edit_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/svc.yaml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, SVC).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
        let mut source = FileSource::new(dir.path());
        let m = source.load().unwrap();
        assert_eq!(m.services.len(), 1);
        assert!(m.problems.is_empty());

        std::fs::write(&file, "apiVersion: v1\nkind: [broken\n# a longer file\n").unwrap();
        let m = source.load().unwrap();
        assert_eq!(m.services.len(), 1, "previous version still served");
        assert_eq!(m.problems.len(), 2, "{:?}", m.problems);

        std::fs::remove_file(&file).unwrap();
        let m = source.load().unwrap();
        assert_eq!(m.services.len(), 0);
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let mut source = FileSource::new("/nonexistent/portcullis");
        let err = source.load().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/portcullis"), "{err}");
    }
}
