//! The generated mesh: per service one file `mesh/svc-NNNN.yaml` with Service `svc-NNNN`, its
//! versions `svc-NNNN-v1` and `-v2`, two static endpoints per version (EndpointSlices) and an
//! HTTPRoute on `svc-NNNN` that splits between the versions.
//!
//! A change rewrites one file, `svc-0001.yaml`, with the route's weights moved (90/10 and 80/20
//! alternately), the way an editor or `git checkout` does: written beside it, then renamed over
//! it, so a watcher never reads half a file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The route weights (v1, v2) of the changed service, by variant: variant 0 is what the mesh is
/// generated with, and change `c` (from 1) writes variant `c % 2`.
pub const WEIGHTS: [(u32, u32); 2] = [(90, 10), (80, 20)];

/// The service whose file every change rewrites.
pub const CHANGED_SERVICE: usize = 1;

/// Services are numbered from 1, so `svc-0001` always exists.
pub fn service_name(i: usize) -> String {
    format!("svc-{i:04}")
}

pub fn file_name(i: usize) -> String {
    format!("{}.yaml", service_name(i))
}

/// The folder Sluice serves: `ROOT/mesh`.
#[derive(Debug)]
pub struct MeshDir {
    root: PathBuf,
    services: usize,
}

impl MeshDir {
    /// Writes `services` service files below `parent/mesh`.
    pub fn generate(parent: &Path, services: usize) -> anyhow::Result<MeshDir> {
        if services == 0 || services > 60_000 {
            bail!("--services must be between 1 and 60000, got {services}");
        }
        let root = parent.join("mesh");
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating the mesh folder {}", root.display()))?;
        for i in 1..=services {
            let path = root.join(file_name(i));
            std::fs::write(&path, service_file(i, WEIGHTS[0]))
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(MeshDir { root, services })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn services(&self) -> usize {
        self.services
    }

    /// Rewrites the changed service's file with the weights of `variant`, atomically.
    pub fn write_variant(&self, variant: usize) -> anyhow::Result<()> {
        let name = file_name(CHANGED_SERVICE);
        let tmp = self.root.join(format!(".{name}.tmp"));
        let path = self.root.join(&name);
        std::fs::write(&tmp, service_file(CHANGED_SERVICE, WEIGHTS[variant % 2]))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
}

/// The file of service `i`: the Service, its two versions with two static endpoints each, and
/// the route splitting `weights` between them.
pub fn service_file(i: usize, (v1_weight, v2_weight): (u32, u32)) -> String {
    let name = service_name(i);
    let mut out = String::with_capacity(2048);
    let _ = write!(
        out,
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  selector:
    app: {name}
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
"#
    );
    for version in 1..=2u32 {
        let _ = write!(
            out,
            r#"---
apiVersion: v1
kind: Service
metadata:
  name: {name}-v{version}
  namespace: default
spec:
  selector:
    app: {name}
    version: v{version}
  ports:
  - name: http
    port: 80
    targetPort: 8080
    appProtocol: http
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-v{version}-static
  namespace: default
  labels:
    kubernetes.io/service-name: {name}-v{version}
addressType: IPv4
endpoints:
- addresses:
  - {a}
  conditions:
    ready: true
- addresses:
  - {b}
  conditions:
    ready: true
ports:
- name: http
  port: 8080
  protocol: TCP
"#,
            a = endpoint_address(i, version, 1),
            b = endpoint_address(i, version, 2),
        );
    }
    let _ = write!(
        out,
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: {name}-split
  namespace: default
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: {name}
    port: 80
  rules:
  - backendRefs:
    - name: {name}-v1
      port: 80
      weight: {v1_weight}
    - name: {name}-v2
      port: 80
      weight: {v2_weight}
"#
    );
    out
}

/// `10.A.B.C`: A.B is the service number, C tells the version and the endpoint apart.
fn endpoint_address(service: usize, version: u32, endpoint: u32) -> String {
    format!(
        "10.{}.{}.{}",
        (service >> 8) & 0xff,
        service & 0xff,
        version * 10 + endpoint
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_mesh_loads_and_compiles() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mesh = MeshDir::generate(dir.path(), 3).expect("generate");
        let revision = sluice::manifest::load_dir(mesh.path(), &Default::default())
            .unwrap_or_else(|errors| panic!("{errors:?}"));
        assert_eq!(revision.services.len(), 9);
        assert_eq!(revision.endpoint_slices.len(), 6);
        assert_eq!(revision.http_routes.len(), 3);
        sluice::compile::compile_mesh("test", &revision, &Default::default())
            .unwrap_or_else(|errors| panic!("{errors:?}"));
    }

    #[test]
    fn a_change_rewrites_only_the_weights() {
        let a = service_file(CHANGED_SERVICE, WEIGHTS[0]);
        let b = service_file(CHANGED_SERVICE, WEIGHTS[1]);
        assert_ne!(a, b);
        assert_eq!(
            a.replace("weight: 90", "weight: 80")
                .replace("weight: 10", "weight: 20"),
            b
        );
    }
}
