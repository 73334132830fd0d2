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

/// Services `echo` (app=echo), `echo-v1` (app=echo, version=v1) and `echo-v2` (app=echo,
/// version=v2), all port 80 → targetPort 8080.
pub const ECHO_SERVICES: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector:
    app: echo
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
---
apiVersion: v1
kind: Service
metadata:
  name: echo-v1
spec:
  selector:
    app: echo
    version: v1
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
---
apiVersion: v1
kind: Service
metadata:
  name: echo-v2
spec:
  selector:
    app: echo
    version: v2
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
"#;

/// The HTTPRoute on Service `echo` that splits between `echo-v1` and `echo-v2`.
pub fn echo_split_route(v1_weight: u32, v2_weight: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-split
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - backendRefs:
    - name: echo-v1
      port: 80
      weight: {v1_weight}
    - name: echo-v2
      port: 80
      weight: {v2_weight}
"#
    )
}
