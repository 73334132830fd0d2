//! Real Git repositories for `sluice serve --repo`, changed the way operators change them: a
//! bare "origin" repository, a work clone that commits and pushes (also with `--force`), and a
//! `git daemon` that serves origin over `git://` on loopback.
//!
//! The `git` program is used here, by the tests only: Sluice itself does not need it.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port_on, STARTUP_TIMEOUT};

/// Runs `git ARGS` in `dir` with no user or system configuration; panics when it fails.
/// Returns its stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=Sluice Test",
            "-c",
            "user.email=test@sluice.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(["-c", "protocol.file.allow=always"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run git {args:?}: {e}"));
    assert!(
        output.status.success(),
        "git {args:?} in {} failed with {}:\n{}{}",
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Where `git` keeps its programs (`git --exec-path`).
fn git_exec_path() -> PathBuf {
    let output = Command::new("git")
        .arg("--exec-path")
        .output()
        .expect("run git --exec-path");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A bare origin repository on branch `main`, and a work clone that pushes to it; removed on
/// drop.
pub struct GitRemote {
    tmp: tempfile::TempDir,
    origin: PathBuf,
    work: PathBuf,
}

impl GitRemote {
    pub fn new() -> GitRemote {
        let tmp = tempfile::Builder::new()
            .prefix("sluice-git-")
            .tempdir()
            .expect("temp dir");
        let origin = tmp.path().join("origin.git");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(&work).expect("create work dir");
        git(tmp.path(), &["init", "--quiet", "--bare", "origin.git"]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["checkout", "--quiet", "-b", "main"]);
        git(
            &work,
            &[
                "remote",
                "add",
                "origin",
                origin.to_str().expect("UTF-8 path"),
            ],
        );
        GitRemote { tmp, origin, work }
    }

    /// The folder that holds `origin.git`: the `--base-path` of a `git daemon`.
    pub fn base(&self) -> &Path {
        self.tmp.path()
    }

    /// The bare repository.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// `file:///…/origin.git`
    pub fn file_url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    /// Writes `name` (relative, may contain `/`) in the work clone.
    pub fn write(&self, name: &str, contents: &str) {
        let path = self.work.join(name);
        std::fs::create_dir_all(path.parent().expect("file in a folder")).expect("mkdir");
        std::fs::write(&path, contents).expect("write file");
    }

    /// Removes `name` from the work clone.
    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.work.join(name)).expect("remove file");
    }

    /// Creates a symlink `name` -> `target` in the work clone.
    pub fn symlink(&self, name: &str, target: &str) {
        let path = self.work.join(name);
        std::fs::create_dir_all(path.parent().expect("in a folder")).expect("mkdir");
        std::os::unix::fs::symlink(target, &path).expect("symlink");
    }

    /// Commits everything and pushes `main`. Returns the commit SHA.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "--all"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.push();
        self.head()
    }

    /// Writes one file, commits and pushes. Returns the commit SHA.
    pub fn commit_file(&self, name: &str, contents: &str, message: &str) -> String {
        self.write(name, contents);
        self.commit(message)
    }

    /// `git revert HEAD`, pushed. Returns the new commit SHA.
    pub fn revert_head(&self) -> String {
        git(&self.work, &["revert", "--quiet", "--no-edit", "HEAD"]);
        self.push();
        self.head()
    }

    /// Points `main` at `commit` and force-pushes: the branch is rewritten.
    pub fn force_push(&self, commit: &str) {
        git(&self.work, &["reset", "--quiet", "--hard", commit]);
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "main"],
        );
    }

    /// Deletes `main` on origin (the work clone keeps it; [`GitRemote::push`] recreates it).
    /// Done in origin itself: a push may not delete the branch its HEAD names.
    pub fn delete_branch(&self) {
        git(&self.origin, &["update-ref", "-d", "refs/heads/main"]);
    }

    pub fn push(&self) {
        git(&self.work, &["push", "--quiet", "origin", "main"]);
    }

    /// The work clone's current commit.
    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

impl Default for GitRemote {
    fn default() -> Self {
        GitRemote::new()
    }
}

/// A `git daemon` serving every repository below a folder over `git://127.0.0.1:PORT/`; killed
/// on drop. It can be stopped and started again on the same port, like a Git server going
/// away and coming back.
pub struct GitDaemon {
    child: Option<Child>,
    base: PathBuf,
    addr: SocketAddr,
}

impl GitDaemon {
    /// Serves `base` on a free port.
    pub fn start(base: &Path) -> GitDaemon {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port_on(Ipv4Addr::LOCALHOST)));
        GitDaemon::start_on(base, addr)
    }

    /// Serves `base` on `addr` (a port known in advance).
    pub fn start_on(base: &Path, addr: SocketAddr) -> GitDaemon {
        let mut daemon = GitDaemon {
            child: None,
            base: base.to_path_buf(),
            addr,
        };
        daemon.restart();
        daemon
    }

    /// `git://127.0.0.1:PORT/NAME`
    pub fn url(&self, name: &str) -> String {
        format!("git://{}/{name}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: connections are refused until [`GitDaemon::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The daemon forks a child per connection; wait until nothing answers any more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts serving again on the same port; waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            // `git-daemon` itself: `git daemon` would run it as a child of its own, and killing
            // `git` would leave the server running.
            let mut child = Command::new(git_exec_path().join("git-daemon"))
                .arg(format!("--listen={}", self.addr.ip()))
                .arg(format!("--port={}", self.addr.port()))
                .arg(format!("--base-path={}", self.base.display()))
                .args([
                    "--export-all",
                    "--enable=receive-pack",
                    "--reuseaddr",
                    "--informative-errors",
                ])
                .arg(&self.base)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn git daemon");
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: the port may still be held; try again
                }
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on {} within {STARTUP_TIMEOUT:?}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Git's smart HTTP protocol on loopback: `git http-backend` run as a CGI program for every
/// request, serving every repository below a folder at `http://127.0.0.1:PORT/NAME`. With
/// `require_auth`, every request without an `Authorization` header gets 401, as a private
/// repository answers. Stops on drop.
pub struct GitHttpServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl GitHttpServer {
    pub async fn start(base: &Path, require_auth: bool) -> GitHttpServer {
        use axum::body::Bytes;
        use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
        use axum::response::IntoResponse;

        let backend = git_exec_path().join("git-http-backend");
        let base = base.to_path_buf();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (backend, base) = (backend.clone(), base.clone());
                async move {
                    if require_auth && !headers.contains_key(header::AUTHORIZATION) {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Basic realm=\"git\"")],
                            "authentication required",
                        )
                            .into_response();
                    }
                    match run_cgi(&backend, &base, &method, &uri, &headers, &body).await {
                        Ok(response) => response,
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the git http server");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttpServer { addr, task }
    }

    /// `http://127.0.0.1:PORT/NAME`
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One CGI request to `git http-backend`.
async fn run_cgi(
    backend: &Path,
    base: &Path,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<axum::response::Response, String> {
    use axum::http::StatusCode;
    use tokio::io::AsyncWriteExt as _;

    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut child = tokio::process::Command::new(backend)
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn git http-backend: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin
        .write_all(body)
        .await
        .map_err(|e| format!("write the request body: {e}"))?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("run git http-backend: {e}"))?;
    let out = output.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, i + 2))
        })
        .ok_or("git http-backend printed no headers")?;
    let head = String::from_utf8_lossy(&out[..split.0]).into_owned();
    let mut response =
        axum::response::Response::new(axum::body::Body::from(out[split.1..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code: u16 = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            *response.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}
