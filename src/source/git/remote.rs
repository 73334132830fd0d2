//! Where a repository is and how to reach it: parsing `--repo`, credentials, and fetching the
//! followed branch with gitoxide. Everything here is blocking and runs on the blocking pool.
//!
//! - A local repository (a path or `file://`) is read in place: its branch is resolved and the
//!   commit read straight from its object database. Nothing is copied, and no `git` program is
//!   needed (gitoxide's file transport would run `git-upload-pack`).
//! - A remote (`https://`, `http://`, `ssh://` or `user@host:path`, `git://`) is fetched into a
//!   private bare repository, the cache: only the branch, with depth 1, refspec
//!   `+refs/heads/BRANCH:refs/remotes/origin/BRANCH` (the `+` follows force-pushes). The commit
//!   the remote advertised for the branch is the one read, so a rewrite is followed as is.
//!
//! Secrets never leave this module: credentials are read from files or the environment, never
//! from a URL, and every error message is scrubbed of them before it is returned.

use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use gix::ObjectId;
use thiserror::Error;

/// More packs than this in the cache and it is started afresh: each fetch adds a pack, and a
/// long-running process must not grow without bound. The next fetch is shallow again.
const MAX_CACHED_PACKS: usize = 64;

/// A `--repo` that cannot be used, found at start-up.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RepoError {
    #[error("--repo {0:?} is not a repository URL or path: {1}")]
    Invalid(String, String),
    #[error("--repo must not hold a password (it would show in process lists and logs): give it with --git-credentials-file or SLUICE_GIT_PASSWORD / SLUICE_GIT_TOKEN")]
    PasswordInUrl,
    #[error("--repo scheme {0:?} is not supported: use a path, file://, https://, http://, ssh:// or git://")]
    UnsupportedScheme(String),
    #[error("--branch {0:?} is not a valid branch name")]
    InvalidBranch(String),
}

/// Where the repository is.
#[derive(Clone, Debug)]
pub enum Location {
    /// A repository on this machine, read in place.
    Local(PathBuf),
    /// A repository fetched over the network into the cache.
    Remote(gix::Url),
}

/// A parsed `--repo`.
#[derive(Clone, Debug)]
pub struct Repo {
    pub location: Location,
    /// The URL or path without any user information, for logs and `/debug/source`.
    pub display: String,
}

impl Repo {
    /// Parses `--repo`. A URL holding a password is refused: secrets come from files or the
    /// environment only.
    pub fn parse(text: &str) -> Result<Repo, RepoError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(RepoError::Invalid(text.into(), "it is empty".into()));
        }
        // Checked before parsing, so even a URL that gitoxide would reject is never echoed back
        // with its password.
        if has_password(text) {
            return Err(RepoError::PasswordInUrl);
        }
        let url = gix::url::parse(text.as_bytes().as_bstr())
            .map_err(|e| RepoError::Invalid(text.into(), e.to_string()))?;
        if url.password().is_some() {
            return Err(RepoError::PasswordInUrl);
        }
        match url.scheme {
            gix::url::Scheme::File => {
                let path = gix::path::from_bstr(url.path.as_bstr())
                    .map_err(|e| RepoError::Invalid(text.into(), e.to_string()))?
                    .into_owned();
                let path = std::path::absolute(&path).unwrap_or(path);
                Ok(Repo {
                    display: path.display().to_string(),
                    location: Location::Local(path),
                })
            }
            gix::url::Scheme::Http
            | gix::url::Scheme::Https
            | gix::url::Scheme::Ssh
            | gix::url::Scheme::Git => Ok(Repo {
                display: sanitize(&url),
                location: Location::Remote(url),
            }),
            other => Err(RepoError::UnsupportedScheme(other.to_string())),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self.location, Location::Local(_))
    }
}

/// Whether a URL-like text holds `user:password@` before its host.
fn has_password(text: &str) -> bool {
    let Some((_, rest)) = text.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => userinfo.contains(':'),
        None => false,
    }
}

/// The URL without user information: `https://host/org/repo.git`.
pub fn sanitize(url: &gix::Url) -> String {
    let mut url = url.clone();
    url.set_user(None);
    url.set_password(None);
    url.to_bstring().to_string()
}

/// Checks a branch name the way Git does for `refs/heads/NAME`.
pub fn check_branch(branch: &str) -> Result<(), RepoError> {
    let full = format!("refs/heads/{branch}");
    match gix::validate::reference::name(full.as_bytes().as_bstr()) {
        Ok(_) if !branch.is_empty() => Ok(()),
        _ => Err(RepoError::InvalidBranch(branch.into())),
    }
}

/// HTTP(S) credentials. Never printed: `Debug` shows only which kind is set.
#[derive(Clone, Default)]
pub enum Credentials {
    #[default]
    None,
    /// Read at every fetch, so a rotated secret is picked up: `username:password`, or a token
    /// alone on the first line.
    File(PathBuf),
    /// From `SLUICE_GIT_USERNAME` + `SLUICE_GIT_PASSWORD`, or `SLUICE_GIT_TOKEN`.
    Static(Account),
}

/// A username and a password (or a token).
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub username: String,
    pub password: String,
}

/// The username sent with a token alone. GitHub takes any username with a token; GitLab takes
/// any with a personal access token too.
pub const TOKEN_USERNAME: &str = "x-access-token";

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::File(path) => write!(f, "File({})", path.display()),
            Credentials::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Account(<redacted>)")
    }
}

impl Credentials {
    /// From `--git-credentials-file`, else from the environment (looked up with `env`).
    pub fn from_sources(
        file: Option<PathBuf>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Credentials {
        if let Some(file) = file {
            return Credentials::File(file);
        }
        let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
        match (
            non_empty("SLUICE_GIT_USERNAME"),
            non_empty("SLUICE_GIT_PASSWORD"),
            non_empty("SLUICE_GIT_TOKEN"),
        ) {
            (username, Some(password), _) => Credentials::Static(Account {
                username: username.unwrap_or_else(|| TOKEN_USERNAME.into()),
                password,
            }),
            (username, None, Some(token)) => Credentials::Static(Account {
                username: username.unwrap_or_else(|| TOKEN_USERNAME.into()),
                password: token,
            }),
            _ => Credentials::None,
        }
    }

    /// The account to answer an authentication challenge with.
    pub fn account(&self) -> Result<Option<Account>, String> {
        match self {
            Credentials::None => Ok(None),
            Credentials::Static(account) => Ok(Some(account.clone())),
            Credentials::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read --git-credentials-file {}: {e}", path.display())
                })?;
                parse_credentials(&text).map(Some).ok_or_else(|| {
                    format!(
                        "--git-credentials-file {} holds no credentials: write `username:password` or a token on its first line",
                        path.display()
                    )
                })
            }
        }
    }

    /// Removes every secret from `message`.
    fn scrub(&self, message: String) -> String {
        let secrets: Vec<String> = match self.account() {
            Ok(Some(account)) => vec![account.password],
            _ => Vec::new(),
        };
        let mut message = message;
        for secret in secrets.iter().filter(|s| s.len() >= 4) {
            message = message.replace(secret.as_str(), "<redacted>");
        }
        message
    }
}

/// `username:password`, or a token alone, on the first non-empty line.
pub fn parse_credentials(text: &str) -> Option<Account> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    match line.split_once(':') {
        Some((username, password)) if !password.is_empty() => Some(Account {
            username: if username.is_empty() {
                TOKEN_USERNAME.into()
            } else {
                username.into()
            },
            password: password.into(),
        }),
        Some(_) => None,
        None => Some(Account {
            username: TOKEN_USERNAME.into(),
            password: line.into(),
        }),
    }
}

/// How `ssh` is run for `ssh://` remotes.
#[derive(Clone, Debug, Default)]
pub struct Ssh {
    /// `-i KEY -o IdentitiesOnly=yes`.
    pub key_file: Option<PathBuf>,
    /// `-o UserKnownHostsFile=FILE`.
    pub known_hosts: Option<PathBuf>,
}

impl Ssh {
    /// The `core.sshCommand` gitoxide runs (through `sh -c`). Host keys are always checked,
    /// and `ssh` never prompts: a process without a terminal must fail, not hang.
    pub fn command(&self) -> String {
        let mut command = String::from(
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 -o ServerAliveInterval=15 -o ServerAliveCountMax=3",
        );
        if let Some(key) = &self.key_file {
            command.push_str(" -o IdentitiesOnly=yes -i ");
            command.push_str(&shell_quote(&key.display().to_string()));
        }
        if let Some(known_hosts) = &self.known_hosts {
            command.push_str(" -o UserKnownHostsFile=");
            command.push_str(&shell_quote(&known_hosts.display().to_string()));
        }
        command
    }
}

/// Single-quotes `text` for `sh`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Why a fetch failed. Messages name the sanitised URL and hold no secret.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FetchError {
    #[error("branch {branch:?} does not exist in {repo}")]
    BranchMissing { repo: String, branch: String },
    #[error("fetching {repo} failed: {message}")]
    Fetch { repo: String, message: String },
    #[error("reading {repo} failed: {message}")]
    Local { repo: String, message: String },
    #[error("fetching {repo} timed out after {seconds} s")]
    Timeout { repo: String, seconds: u64 },
}

/// Fetches the followed branch and opens the repository to read commits from.
#[derive(Debug)]
pub struct Fetcher {
    pub repo: Repo,
    pub branch: String,
    /// The private bare repository remotes are fetched into.
    pub cache: PathBuf,
    pub credentials: Credentials,
    pub ssh: Ssh,
}

impl Fetcher {
    /// Fetches the branch: its commit, and the repository that now holds it.
    pub fn fetch(&self, interrupt: &AtomicBool) -> Result<(ObjectId, gix::Repository), FetchError> {
        match &self.repo.location {
            Location::Local(path) => self.resolve_local(path),
            Location::Remote(url) => self.fetch_remote(url, interrupt),
        }
    }

    fn local_error(&self, message: impl fmt::Display) -> FetchError {
        FetchError::Local {
            repo: self.repo.display.clone(),
            message: message.to_string(),
        }
    }

    fn fetch_error(&self, error: &dyn std::error::Error) -> FetchError {
        let mut message = error_chain(error);
        // gitoxide asks for credentials when the server refuses access, and says only that
        // none came; say what the operator can do instead.
        if message.contains("No credentials were returned") {
            let ssh = matches!(&self.repo.location, Location::Remote(url) if url.scheme == gix::url::Scheme::Ssh);
            message = if ssh {
                "authentication failed: the SSH server refused the key (check --ssh-key-file, and that its public key may read the repository)".into()
            } else {
                "authentication required: give credentials with --git-credentials-file, or SLUICE_GIT_USERNAME and SLUICE_GIT_PASSWORD (or SLUICE_GIT_TOKEN)".into()
            };
        }
        FetchError::Fetch {
            repo: self.repo.display.clone(),
            message: self.credentials.scrub(message),
        }
    }

    fn resolve_local(&self, path: &Path) -> Result<(ObjectId, gix::Repository), FetchError> {
        let repo = gix::open_opts(path, gix::open::Options::isolated())
            .map_err(|e| self.local_error(error_chain(&e)))?;
        let name = format!("refs/heads/{}", self.branch);
        let mut reference = repo
            .try_find_reference(name.as_str())
            .map_err(|e| self.local_error(error_chain(&e)))?
            .ok_or_else(|| FetchError::BranchMissing {
                repo: self.repo.display.clone(),
                branch: self.branch.clone(),
            })?;
        let id = reference
            .peel_to_id()
            .map_err(|e| self.local_error(error_chain(&e)))?
            .detach();
        Ok((id, repo))
    }

    /// Opens the cache, creating it (or starting it afresh) when needed.
    fn open_cache(&self) -> Result<gix::Repository, FetchError> {
        let cache_error = |e: &dyn std::error::Error| FetchError::Fetch {
            repo: self.repo.display.clone(),
            message: format!(
                "the cache {} cannot be used: {}",
                self.cache.display(),
                error_chain(e)
            ),
        };
        if pack_count(&self.cache) > MAX_CACHED_PACKS {
            tracing::info!(cache = %self.cache.display(), "the git cache holds many packs; starting it afresh");
            let _ = std::fs::remove_dir_all(&self.cache);
        }
        let options = || {
            gix::open::Options::isolated()
                // The variant is named so gitoxide does not probe the program with `ssh -G`.
                .config_overrides([
                    format!("core.sshCommand={}", self.ssh.command()),
                    "ssh.variant=ssh".to_string(),
                ])
        };
        if self.cache.join("HEAD").is_file() {
            match gix::open_opts(&self.cache, options()) {
                Ok(repo) => return Ok(repo),
                Err(err) => {
                    tracing::warn!(cache = %self.cache.display(), error = %error_chain(&err), "the git cache cannot be opened; starting it afresh");
                    let _ = std::fs::remove_dir_all(&self.cache);
                }
            }
        }
        std::fs::create_dir_all(&self.cache).map_err(|e| cache_error(&e))?;
        gix::init_bare(&self.cache).map_err(|e| cache_error(&e))?;
        gix::open_opts(&self.cache, options()).map_err(|e| cache_error(&e))
    }

    fn fetch_remote(
        &self,
        url: &gix::Url,
        interrupt: &AtomicBool,
    ) -> Result<(ObjectId, gix::Repository), FetchError> {
        use gix::remote::Direction;
        let repo = self.open_cache()?;
        let refspec = format!(
            "+refs/heads/{branch}:refs/remotes/origin/{branch}",
            branch = self.branch
        );
        let remote = repo
            .remote_at(url.clone())
            .and_then(|r| r.with_refspecs(Some(refspec.as_str()), Direction::Fetch))
            .map_err(|e| self.fetch_error(&e))?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let account = self
            .credentials
            .account()
            .map_err(|message| FetchError::Fetch {
                repo: self.repo.display.clone(),
                message,
            })?;
        let connection = remote
            .connect(Direction::Fetch)
            .map_err(|e| self.fetch_error(&e))?
            .with_credentials(move |action| Ok(answer(account.as_ref(), action)));
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.fetch_error(&e))?;
        let wanted = format!("refs/heads/{}", self.branch);
        let advertised = prepare
            .ref_map()
            .mappings
            .iter()
            .find(|m| m.remote.as_name().is_some_and(|n| n == wanted.as_bytes()))
            .and_then(|m| m.remote.peeled_id())
            .map(ToOwned::to_owned);
        let Some(commit) = advertised else {
            return Err(FetchError::BranchMissing {
                repo: self.repo.display.clone(),
                branch: self.branch.clone(),
            });
        };
        if !repo.has_object(commit) {
            let depth = NonZeroU32::MIN;
            prepare
                .with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth))
                .receive(gix::progress::Discard, interrupt)
                .map_err(|e| self.fetch_error(&e))?;
        }
        // A fresh handle sees the pack just written.
        let repo = gix::open_opts(&self.cache, gix::open::Options::isolated())
            .map_err(|e| self.fetch_error(&e))?;
        if !repo.has_object(commit) {
            return Err(FetchError::Fetch {
                repo: self.repo.display.clone(),
                message: format!("the remote did not send commit {commit}"),
            });
        }
        // Remember what the remote's branch is now, including a rewind that needed no pack, so
        // a restart with the same --cache-dir starts from it.
        if let Err(err) = repo.reference(
            self.tracking_ref().as_str(),
            commit,
            gix::refs::transaction::PreviousValue::Any,
            "sluice: fetch",
        ) {
            tracing::debug!(error = %error_chain(&err), "cannot record the fetched commit in the cache");
        }
        Ok((commit, repo))
    }

    fn tracking_ref(&self) -> String {
        format!("refs/remotes/origin/{}", self.branch)
    }

    /// The commit the cache last fetched for the branch, from an earlier run with the same
    /// `--cache-dir`; `None` for a local repository or an empty cache.
    pub fn cached(&self) -> Option<(ObjectId, gix::Repository)> {
        if !matches!(self.repo.location, Location::Remote(_)) || !self.cache.join("HEAD").is_file()
        {
            return None;
        }
        let repo = gix::open_opts(&self.cache, gix::open::Options::isolated()).ok()?;
        let commit = repo
            .try_find_reference(self.tracking_ref().as_str())
            .ok()??
            .peel_to_id()
            .ok()?
            .detach();
        repo.has_object(commit).then_some((commit, repo))
    }
}

/// The answer to gitoxide's credential requests: the account for `Get`, nothing to store or
/// erase (there is no helper behind it).
fn answer(
    account: Option<&Account>,
    action: gix::credentials::helper::Action,
) -> Option<gix::credentials::protocol::Outcome> {
    match (action, account) {
        (gix::credentials::helper::Action::Get(context), Some(account)) => {
            Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: account.username.clone(),
                    password: account.password.clone(),
                    oauth_refresh_token: None,
                },
                next: context.into(),
            })
        }
        _ => None,
    }
}

fn pack_count(cache: &Path) -> usize {
    std::fs::read_dir(cache.join("objects/pack"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
                .count()
        })
        .unwrap_or(0)
}

/// An error and its sources, `: `-separated, without repeating a message its source repeats.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        source = next.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_file_urls_are_local() {
        for text in ["/srv/mesh.git", "file:///srv/mesh.git"] {
            let repo = Repo::parse(text).expect("valid");
            assert!(repo.is_local(), "{text}");
            assert_eq!(repo.display, "/srv/mesh.git");
        }
        let relative = Repo::parse("mesh").expect("valid");
        match relative.location {
            Location::Local(path) => assert!(path.is_absolute(), "{path:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn network_urls_are_remote_and_shown_without_user_information() {
        let cases = [
            (
                "https://example.com/org/mesh.git",
                "https://example.com/org/mesh.git",
            ),
            (
                "https://deploy@example.com/org/mesh.git",
                "https://example.com/org/mesh.git",
            ),
            (
                "ssh://git@example.com:2222/org/mesh.git",
                "ssh://example.com:2222/org/mesh.git",
            ),
            (
                "git://127.0.0.1:9418/mesh.git",
                "git://127.0.0.1:9418/mesh.git",
            ),
            ("http://example.com/mesh", "http://example.com/mesh"),
        ];
        for (text, shown) in cases {
            let repo = Repo::parse(text).expect("valid");
            assert!(!repo.is_local(), "{text}");
            assert_eq!(repo.display, shown, "{text}");
        }
        let scp = Repo::parse("git@example.com:org/mesh.git").expect("scp-like is ssh");
        assert!(!scp.is_local());
        assert!(!scp.display.contains("git@"), "{}", scp.display);
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_echoed() {
        for text in [
            "https://user:hunter2@example.com/mesh.git",
            "https://:hunter2@example.com/mesh.git",
            "ssh://git:hunter2@example.com/mesh.git",
        ] {
            let err = Repo::parse(text).expect_err("password");
            assert_eq!(err, RepoError::PasswordInUrl, "{text}");
            assert!(!err.to_string().contains("hunter2"));
        }
        // An `@` in the path is not user information.
        assert!(Repo::parse("https://example.com/a:b@c/mesh.git").is_ok());
    }

    #[test]
    fn branch_names_are_checked() {
        assert!(check_branch("main").is_ok());
        assert!(check_branch("release/v1").is_ok());
        for bad in ["", "a..b", "a b", "-x/..", "x.lock", "a~1", "a:b"] {
            assert!(check_branch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_come_from_the_file_or_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let account = |c: Credentials| c.account().expect("readable");
        assert_eq!(account(Credentials::from_sources(None, env(&[]))), None);
        assert_eq!(
            account(Credentials::from_sources(
                None,
                env(&[
                    ("SLUICE_GIT_USERNAME", "bot"),
                    ("SLUICE_GIT_PASSWORD", "s3cret")
                ])
            )),
            Some(Account {
                username: "bot".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            account(Credentials::from_sources(
                None,
                env(&[("SLUICE_GIT_TOKEN", "ghp_x")])
            )),
            Some(Account {
                username: TOKEN_USERNAME.into(),
                password: "ghp_x".into()
            })
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("creds");
        std::fs::write(&file, "bot:s3cret\n").expect("write");
        let from_file =
            Credentials::from_sources(Some(file.clone()), env(&[("SLUICE_GIT_TOKEN", "ignored")]));
        assert_eq!(
            account(from_file.clone()),
            Some(Account {
                username: "bot".into(),
                password: "s3cret".into()
            })
        );
        // Read at each fetch: a rotated secret is picked up.
        std::fs::write(&file, "tok3n\n").expect("write");
        assert_eq!(
            account(from_file.clone()),
            Some(Account {
                username: TOKEN_USERNAME.into(),
                password: "tok3n".into()
            })
        );
        std::fs::write(&file, "\n").expect("write");
        let err = from_file.account().expect_err("empty file");
        assert!(err.contains("holds no credentials"), "{err}");
        assert!(!format!("{from_file:?}").contains("tok3n"));
        let stat = Credentials::from_sources(None, env(&[("SLUICE_GIT_TOKEN", "ghp_secret")]));
        assert!(!format!("{stat:?}").contains("ghp_secret"));
        assert_eq!(
            stat.scrub("auth failed for ghp_secret at host".into()),
            "auth failed for <redacted> at host"
        );
    }

    #[test]
    fn credential_requests_get_the_account_and_nothing_is_stored() {
        use gix::credentials::helper::Action;
        let account = Account {
            username: "bot".into(),
            password: "s3cret".into(),
        };
        let get = || Action::get_for_url("https://example.com/org/mesh.git");
        let outcome = answer(Some(&account), get()).expect("an identity for Get");
        assert_eq!(outcome.identity.username, "bot");
        assert_eq!(outcome.identity.password, "s3cret");
        assert!(answer(None, get()).is_none(), "no account, no identity");
        let store = outcome.next.store();
        assert!(answer(Some(&account), store).is_none());
    }

    #[test]
    fn ssh_command_checks_host_keys_and_uses_only_the_key_given() {
        let plain = Ssh::default().command();
        assert!(plain.contains("StrictHostKeyChecking=yes") && plain.contains("BatchMode=yes"));
        assert!(!plain.contains("-i "));
        let ssh = Ssh {
            key_file: Some(PathBuf::from("/keys/it's key")),
            known_hosts: Some(PathBuf::from("/keys/known_hosts")),
        };
        let command = ssh.command();
        assert!(
            command.contains(r"-o IdentitiesOnly=yes -i '/keys/it'\''s key'"),
            "{command}"
        );
        assert!(
            command.contains("-o UserKnownHostsFile='/keys/known_hosts'"),
            "{command}"
        );
    }
}
