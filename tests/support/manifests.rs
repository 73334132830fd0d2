//! A manifest directory for `sluice serve --dir`, changed the way an operator's tools change it.

use std::path::{Path, PathBuf};

/// A temporary directory of manifests; removed on drop.
pub struct ManifestDir {
    dir: tempfile::TempDir,
}

impl ManifestDir {
    pub fn new() -> ManifestDir {
        let dir = tempfile::Builder::new()
            .prefix("sluice-manifests-")
            .tempdir()
            .expect("temp dir");
        ManifestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `name` (relative, may contain `/`) atomically: the text goes to a temp file in the
    /// same folder, which is then renamed over `name`, as editors and `git checkout` do. A
    /// watcher never sees half a file.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let folder = path.parent().expect("file in a folder");
        std::fs::create_dir_all(folder).expect("create manifest folder");
        let file_name = path.file_name().expect("file name").to_string_lossy();
        let tmp = folder.join(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, contents).expect("write manifest temp file");
        std::fs::rename(&tmp, &path).expect("rename manifest into place");
        path
    }

    /// Deletes `name`.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join(name)).expect("remove manifest");
    }
}

impl Default for ManifestDir {
    fn default() -> Self {
        ManifestDir::new()
    }
}
