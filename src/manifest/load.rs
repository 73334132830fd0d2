//! Loading a revision: files from a folder (or from a Git commit, in memory), YAML documents,
//! typed objects, then validation. All or nothing: a revision with one error is not returned,
//! and every error found is.
//!
//! The limits are checked before anything is read or parsed, so a hostile or broken repository
//! costs bounded time and memory.

use std::collections::hash_map;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use serde::Deserialize;
use xxhash_rust::xxh3::Xxh3;

use super::de;
use super::model::{EndpointSlice, GrpcRoute, HttpRoute, ObjectMeta, Service, SERVICE_NAME_LABEL};
use super::parts::{route_links, References, Split};
use super::validate::{self, Kind, Trees};
use super::yaml::{self, Node, NodeKind};
use super::{Diagnostic, Object, ObjectKey, PartMemo, Pos, Revision};

/// Limits and switches for loading a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Larger files are refused without being read. Default 2 MiB (Kubernetes itself refuses
    /// objects above about 1.5 MiB).
    pub max_file_bytes: usize,
    /// The revision is refused once its manifest files add up to more. Default 64 MiB.
    pub max_total_bytes: usize,
    /// The revision is refused if it holds more manifest files. Default 10,000.
    pub max_files: usize,
    /// Mappings and lists nested deeper are refused. Default 64; manifests need about 12.
    pub max_depth: usize,
    /// Serve a revision that holds no Service at all (`--allow-empty`).
    pub allow_empty: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_file_bytes: 2 * 1024 * 1024,
            max_total_bytes: 64 * 1024 * 1024,
            max_files: 10_000,
            max_depth: 64,
            allow_empty: false,
        }
    }
}

/// One manifest file of a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the revision root, with `/` separators.
    pub path: String,
    pub bytes: Arc<[u8]>,
}

/// The message of a revision without any Service.
pub const EMPTY_REVISION: &str = "revision holds no Service; pass --allow-empty to serve it";

/// Whether a file name is one Sluice reads: `*.yaml` or `*.yml`, not hidden. Editor leftovers
/// (`x.yaml~`, `.x.yaml.swp`) and everything else are ignored.
pub fn is_manifest_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// A position for a whole file.
fn file_pos(file: &str) -> Pos {
    Pos {
        file: Arc::from(file),
        line: 1,
        column: 1,
    }
}

/// Loads the manifests below `root`: [`read_dir`] then [`load_files`].
pub fn load_dir(root: &Path, opts: &LoadOptions) -> Result<Revision, Vec<Diagnostic>> {
    let files = read_dir(root, opts)?;
    load_files(&files, opts)
}

/// Reads every manifest file below `root`, sorted by path.
///
/// Hidden files and folders (`.git`, `.x.yaml.swp`) are skipped, and so is every file that is
/// not `*.yaml`/`*.yml`. Symlinks are followed only when they are relative and stay inside
/// `root`; an absolute symlink, one that leaves `root`, a dangling one or a loop is an error.
/// The limits of `opts` are checked on file sizes before any file is read.
pub fn read_dir(root: &Path, opts: &LoadOptions) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    read_dir_cached(root, opts, &mut ReadCache::default())
}

/// [`read_dir`], taking the bytes of a file from `cache` instead of reading it again when its
/// size, modification and change times and inode are those it had at the previous read (the
/// same signs the folder's change detection goes by).
pub fn read_dir_cached(
    root: &Path,
    opts: &LoadOptions,
    cache: &mut ReadCache,
) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    read_listed(&list_dir(root, opts)?, opts, cache)
}

/// The manifest files below a folder as one walk found them, before any was read: each one's
/// path relative to the folder, where to read it and its metadata, and the problems met on the
/// way (refused symlinks, unreadable folders).
#[derive(Debug)]
pub struct Listing {
    /// The folder, resolved.
    root: PathBuf,
    found: Vec<(String, PathBuf, fs::Metadata)>,
    /// The folders walked, relative to the root (`""` is the root).
    dirs: HashSet<String>,
    /// No symlink was followed and every file found has one link: a file's content changes
    /// only through its own path, so a change notification names every file that changed.
    plain: bool,
    errors: Vec<Diagnostic>,
}

impl Listing {
    /// A hash of everything the walk saw: where the folder resolves to, and every file's path
    /// and [`Stamp`] (size, modification and change times, inode), and the problems met. A
    /// file written, replaced, added or removed, a symlink swapped or repaired, changes it.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = Xxh3::new();
        hasher.update(self.root.as_os_str().as_encoded_bytes());
        hasher.update(&[0]);
        for (rel, _, meta) in &self.found {
            hasher.update(rel.as_bytes());
            hasher.update(&[0]);
            Stamp::of(meta).hash(&mut hasher);
        }
        for error in &self.errors {
            hasher.update(error.to_string().as_bytes());
            hasher.update(&[0]);
        }
        hasher.digest()
    }

    /// The listing after the files or folders at `changed` (paths relative to the folder, as
    /// change notifications name them) changed, told by looking at those paths alone instead of
    /// walking the folder: a manifest rewritten, created, renamed or removed in a folder the walk
    /// went through. `None` when only a walk can tell: a folder or symlink created or removed, a
    /// path that is not plain UTF-8, a hard-linked file, and any listing that followed a symlink
    /// or met an error.
    pub fn updated<'a>(&self, changed: impl IntoIterator<Item = &'a Path>) -> Option<Listing> {
        if !self.plain || !self.errors.is_empty() {
            return None;
        }
        let mut found = self.found.clone();
        for path in changed {
            let Some(rel) = walked_name(path)? else {
                continue;
            };
            let at = found.binary_search_by(|(r, _, _)| r.as_str().cmp(&rel));
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    let (parent, name) = rel.rsplit_once('/').unwrap_or(("", &rel));
                    if !is_manifest_name(name) {
                        continue;
                    }
                    if !self.dirs.contains(parent) || !has_one_link(&meta) {
                        return None;
                    }
                    match at {
                        Ok(i) => found[i].2 = meta,
                        Err(i) => found.insert(i, (rel, path, meta)),
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    if !self.dirs.contains(&rel) {
                        return None;
                    }
                }
                Ok(meta) if meta.is_symlink() => return None,
                // A socket or a pipe: not read.
                Ok(_) => {
                    if let Ok(i) = at {
                        found.remove(i);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at {
                    Ok(i) => {
                        found.remove(i);
                    }
                    Err(_) if self.dirs.contains(&rel) => return None,
                    Err(_) => {}
                },
                Err(_) => return None,
            }
        }
        Some(Listing {
            root: self.root.clone(),
            found,
            dirs: self.dirs.clone(),
            plain: true,
            errors: Vec::new(),
        })
    }
}

/// `path` (relative) as the walk names it (`a/b.yaml`); `Some(None)` when the walk skips it
/// (it or a folder above it is hidden); `None` when it is not a plain relative UTF-8 path.
fn walked_name(path: &Path) -> Option<Option<String>> {
    let mut rel = String::new();
    for component in path.components() {
        let std::path::Component::Normal(name) = component else {
            return None;
        };
        let name = name.to_str()?;
        if name.starts_with('.') {
            return Some(None);
        }
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(name);
    }
    (!rel.is_empty()).then_some(Some(rel))
}

fn has_one_link(meta: &fs::Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.nlink() == 1
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        false
    }
}

/// Walks the folder below `root` without reading any file (see [`read_dir`] for what is
/// skipped and followed). An error when the folder itself cannot be resolved.
pub fn list_dir(root: &Path, opts: &LoadOptions) -> Result<Listing, Vec<Diagnostic>> {
    let canonical_root = fs::canonicalize(root).map_err(|e| {
        vec![Diagnostic::error(
            file_pos(&root.display().to_string()),
            format!("cannot read the manifest folder: {e}"),
        )]
    })?;
    let mut errors = Vec::new();
    let walked = walk(&canonical_root, opts, &mut errors);
    Ok(Listing {
        root: canonical_root,
        found: walked.found,
        dirs: walked.dirs,
        plain: walked.plain,
        errors,
    })
}

/// Reads the files of `listing`, taking from `cache` every file whose metadata at the walk is
/// what it was when the cache read it.
pub fn read_listed(
    listing: &Listing,
    opts: &LoadOptions,
    cache: &mut ReadCache,
) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    let mut errors = listing.errors.clone();
    let mut files = Vec::new();
    let mut previous = std::mem::take(&mut cache.files);
    let mut kept = HashMap::new();
    let mut total: usize = 0;
    for (i, (rel, path, meta)) in listing.found.iter().enumerate() {
        let rel = rel.clone();
        let len = meta.len();
        if i >= opts.max_files {
            errors.push(Diagnostic::error(
                file_pos(&rel),
                format!(
                    "the revision holds more than {} manifest files; this one and those after it are not read",
                    opts.max_files
                ),
            ));
            break;
        }
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > opts.max_file_bytes {
            errors.push(too_big(&rel, len, opts.max_file_bytes));
            continue;
        }
        total = total.saturating_add(len);
        if total > opts.max_total_bytes {
            errors.push(total_too_big(&rel, opts.max_total_bytes));
            break;
        }
        let stamp = Stamp::of(meta);
        if let Some((_, bytes)) = previous.remove(&rel).filter(|(s, _)| *s == stamp) {
            files.push(SourceFile {
                path: rel.clone(),
                bytes: bytes.clone(),
            });
            kept.insert(rel, (stamp, bytes));
            continue;
        }
        #[cfg(test)]
        {
            cache.reads += 1;
        }
        // Read at most one byte past the limit, in case the file grew since it was listed.
        let read = fs::File::open(path).and_then(|f| {
            let mut bytes = Vec::with_capacity(len.min(opts.max_file_bytes));
            f.take(opts.max_file_bytes as u64 + 1)
                .read_to_end(&mut bytes)?;
            Ok(bytes)
        });
        match read {
            Ok(bytes) if bytes.len() > opts.max_file_bytes => {
                errors.push(too_big(&rel, bytes.len(), opts.max_file_bytes))
            }
            Ok(bytes) => {
                let bytes: Arc<[u8]> = bytes.into();
                kept.insert(rel.clone(), (stamp, bytes.clone()));
                files.push(SourceFile { path: rel, bytes });
            }
            Err(e) => errors.push(Diagnostic::error(
                file_pos(&rel),
                format!("cannot read the file: {e}"),
            )),
        }
    }
    cache.files = kept;
    if errors.is_empty() {
        Ok(files)
    } else {
        errors.sort();
        Err(errors)
    }
}

/// The files of the previous [`read_dir_cached`], with the stamp each had when it was read.
#[derive(Debug, Default)]
pub struct ReadCache {
    files: HashMap<String, (Stamp, Arc<[u8]>)>,
    /// Files read (not reused) so far.
    #[cfg(test)]
    reads: usize,
}

/// What tells that a file may have changed: size, modification and (on Unix) change time and
/// inode, so a file replaced by a rename or rewritten in place is read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    changed: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        }
    }

    fn hash(&self, hasher: &mut Xxh3) {
        hasher.update(&self.len.to_le_bytes());
        let modified = self
            .modified
            .and_then(|m| m.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        hasher.update(&modified.to_le_bytes());
        #[cfg(unix)]
        {
            hasher.update(&self.changed.0.to_le_bytes());
            hasher.update(&self.changed.1.to_le_bytes());
            hasher.update(&self.inode.0.to_le_bytes());
            hasher.update(&self.inode.1.to_le_bytes());
        }
    }
}

fn too_big(file: &str, len: usize, max: usize) -> Diagnostic {
    Diagnostic::error(
        file_pos(file),
        format!("file is {len} bytes, above the limit of {max} bytes per file"),
    )
}

fn total_too_big(file: &str, max: usize) -> Diagnostic {
    Diagnostic::error(
        file_pos(file),
        format!("the manifest files add up to more than {max} bytes at this file; the revision is refused"),
    )
}

/// A folder to walk: where it is, its path relative to the root, and the canonical paths of
/// itself and its ancestors (to find symlink loops).
struct Dir {
    path: PathBuf,
    rel: String,
    chain: Vec<PathBuf>,
}

/// What a walk found (see [`Listing`]).
struct Walked {
    found: Vec<(String, PathBuf, fs::Metadata)>,
    dirs: HashSet<String>,
    plain: bool,
}

/// Finds the manifest files below `root` (canonical): (relative path, path to read, metadata).
fn walk(root: &Path, opts: &LoadOptions, errors: &mut Vec<Diagnostic>) -> Walked {
    let mut found = Vec::new();
    let mut dirs = HashSet::new();
    let mut plain = true;
    let mut stack = vec![Dir {
        path: root.to_path_buf(),
        rel: String::new(),
        chain: vec![root.to_path_buf()],
    }];
    let mut folders = 0usize;
    while let Some(dir) = stack.pop() {
        folders += 1;
        // Symlinked folders can multiply the tree; bound the walk like the file count.
        if folders > opts.max_files {
            errors.push(Diagnostic::error(
                file_pos(if dir.rel.is_empty() { "." } else { &dir.rel }),
                format!(
                    "the revision holds more than {} folders; the rest is not read",
                    opts.max_files
                ),
            ));
            break;
        }
        let entries = match fs::read_dir(&dir.path) {
            Ok(entries) => entries,
            Err(e) => {
                let rel = if dir.rel.is_empty() { "." } else { &dir.rel };
                errors.push(Diagnostic::error(
                    file_pos(rel),
                    format!("cannot read the folder: {e}"),
                ));
                continue;
            }
        };
        dirs.insert(dir.rel.clone());
        let mut names: Vec<(String, fs::DirEntry)> = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            names.push((name, entry));
        }
        names.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (name, entry) in names {
            if name.starts_with('.') {
                continue;
            }
            let rel = if dir.rel.is_empty() {
                name.clone()
            } else {
                format!("{}/{name}", dir.rel)
            };
            let path = entry.path();
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if entry.file_name().to_str().is_none() {
                if is_manifest_name(&name) {
                    errors.push(Diagnostic::error(
                        file_pos(&rel),
                        "the file name is not valid UTF-8",
                    ));
                }
                continue;
            }
            if file_type.is_symlink() {
                if let Some(target) = follow_symlink(&path, &rel, &name, root, &dir.chain, errors) {
                    plain = false;
                    match target {
                        Target::File(canonical, meta) => found.push((rel, canonical, meta)),
                        Target::Dir(canonical) => {
                            let mut chain = dir.chain.clone();
                            chain.push(canonical.clone());
                            subdirs.push(Dir {
                                path: canonical,
                                rel,
                                chain,
                            });
                        }
                    }
                }
            } else if file_type.is_dir() {
                let mut chain = dir.chain.clone();
                chain.push(
                    dir.chain
                        .last()
                        .map_or_else(|| path.clone(), |p| p.join(&name)),
                );
                subdirs.push(Dir { path, rel, chain });
            } else if file_type.is_file() && is_manifest_name(&name) {
                match entry.metadata() {
                    Ok(meta) => {
                        plain &= has_one_link(&meta);
                        found.push((rel, path, meta));
                    }
                    Err(e) => errors.push(Diagnostic::error(
                        file_pos(&rel),
                        format!("cannot read the file: {e}"),
                    )),
                }
            }
        }
        // Depth-first in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Walked { found, dirs, plain }
}

enum Target {
    File(PathBuf, fs::Metadata),
    Dir(PathBuf),
}

/// Resolves a symlink that may matter (named like a manifest, or pointing to a folder), or
/// reports why it is refused. Other symlinks are ignored like other non-manifest files.
fn follow_symlink(
    path: &Path,
    rel: &str,
    name: &str,
    root: &Path,
    chain: &[PathBuf],
    errors: &mut Vec<Diagnostic>,
) -> Option<Target> {
    let points_to_dir = fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
    if !is_manifest_name(name) && !points_to_dir {
        return None;
    }
    let target = fs::read_link(path).ok()?;
    if target.is_absolute() {
        errors.push(Diagnostic::error(
            file_pos(rel),
            format!(
                "symlink to the absolute path {:?} is refused: only relative symlinks that stay inside the folder are followed",
                target.display().to_string()
            ),
        ));
        return None;
    }
    let canonical = match fs::canonicalize(path) {
        Ok(c) => c,
        Err(e) => {
            errors.push(Diagnostic::error(
                file_pos(rel),
                format!(
                    "symlink to {:?} cannot be followed (a loop, or a missing target): {e}",
                    target.display().to_string()
                ),
            ));
            return None;
        }
    };
    if !canonical.starts_with(root) {
        errors.push(Diagnostic::error(
            file_pos(rel),
            format!(
                "symlink to {:?} is refused: it leaves the manifest folder",
                target.display().to_string()
            ),
        ));
        return None;
    }
    let meta = fs::metadata(&canonical).ok()?;
    if meta.is_dir() {
        if chain.contains(&canonical) {
            errors.push(Diagnostic::error(
                file_pos(rel),
                format!(
                    "symlink to {:?} is refused: it loops back to a folder that contains it",
                    target.display().to_string()
                ),
            ));
            return None;
        }
        Some(Target::Dir(canonical))
    } else if meta.is_file() {
        Some(Target::File(canonical, meta))
    } else {
        None
    }
}

/// Loads a revision from files in memory (read by [`read_dir`], or from a Git commit).
///
/// Multi-document files are read; each document is dispatched on `apiVersion` and `kind`:
/// `v1` Service, `discovery.k8s.io/v1` EndpointSlice, `gateway.networking.k8s.io/v1` HTTPRoute
/// and GRPCRoute (and `v1` List, whose items are read the same way). Every other kind is skipped;
/// another version of a kind Sluice reads is an error, since ignoring it would diverge from what
/// the cluster does with it. The top-level `status` of an object (as `kubectl get -o yaml`
/// prints it) is ignored: controllers write it, not operators.
///
/// On success the warnings are in [`Revision::warnings`]; on failure every error and warning
/// found is returned, sorted by file, line and column.
pub fn load_files(files: &[SourceFile], opts: &LoadOptions) -> Result<Revision, Vec<Diagnostic>> {
    load_files_cached(files, opts, &mut ParseCache::default())
}

/// [`load_files`], parsing only the files whose bytes differ from those `cache` saw in the
/// previous load: a one-file change in a large mesh parses one file. The revision is still
/// checked whole, so the result is exactly what [`load_files`] returns.
pub fn load_files_cached(
    files: &[SourceFile],
    opts: &LoadOptions,
    cache: &mut ParseCache,
) -> Result<Revision, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let limits = yaml::Limits {
        max_bytes: opts.max_file_bytes,
        max_depth: opts.max_depth,
    };
    cache.set_limits(&limits);
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));

    let mut taken = Vec::new();
    let mut total: usize = 0;
    cache.placement_moved = false;
    for (i, f) in sorted.iter().enumerate() {
        if i >= opts.max_files {
            diags.push(Diagnostic::error(
                file_pos(&f.path),
                format!(
                    "the revision holds more than {} manifest files; this one and those after it are not read",
                    opts.max_files
                ),
            ));
            break;
        }
        total = total.saturating_add(f.bytes.len());
        if total > opts.max_total_bytes {
            diags.push(total_too_big(&f.path, opts.max_total_bytes));
            break;
        }
        let parsed = cache.parse(f, &limits);
        diags.extend(parsed.diags.iter().cloned());
        taken.push(f.path.as_str());
    }
    cache.keep_only(&sorted);
    // Every file taken, as last time, and none defines other objects than it did: still no
    // object is defined twice, and the objects link up into the same parts.
    let complete = taken.len() == sorted.len();
    let same_places = complete && cache.keys_unique && !cache.placement_moved;
    #[cfg(test)]
    {
        cache.duplicate_checks += usize::from(!same_places);
        cache.splits += usize::from(!same_places || cache.split.is_none());
    }
    let ParseCache {
        files,
        validated,
        keys_unique,
        split,
        ..
    } = cache;
    // Borrowed from the cache: a file that did not change costs no copy of its objects.
    let docs: Vec<&Loaded> = taken
        .iter()
        .filter_map(|path| files.get(*path))
        .flat_map(|parsed| &parsed.docs)
        .collect();

    let mut rev = Revision::default();
    let (mut services, mut slices) = (Vec::new(), Vec::new());
    let mut first_seen: HashMap<(Kind, &ObjectKey), &Pos> = HashMap::new();
    if !same_places {
        first_seen.reserve(docs.len());
    }
    let mut unique = true;
    for doc in &docs {
        if !same_places {
            match first_seen.entry((doc.kind, &doc.key)) {
                hash_map::Entry::Occupied(first) => {
                    diags.push(Diagnostic::error(
                        doc.pos.clone(),
                        format!(
                            "{} {} is defined twice: here and in {}",
                            doc.kind,
                            doc.key,
                            first.get()
                        ),
                    ));
                    unique = false;
                    continue;
                }
                hash_map::Entry::Vacant(slot) => {
                    slot.insert(&doc.pos);
                }
            }
        }
        match &doc.object {
            Typed::Service(object) => services.push((doc.key.clone(), object.clone())),
            Typed::EndpointSlice(object) => slices.push((doc.key.clone(), object.clone())),
            Typed::HttpRoute(object) => rev.http_routes.push(object.clone()),
            Typed::GrpcRoute(object) => rev.grpc_routes.push(object.clone()),
        }
    }
    *keys_unique = complete && unique;
    // Keys are unique by now: sorted once, the maps are built in one pass rather than by
    // thousands of searches.
    services.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    slices.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rev.services = services.into_iter().collect();
    rev.endpoint_slices = slices.into_iter().collect();
    sort_routes(&mut rev.http_routes, |r| &r.metadata);
    sort_routes(&mut rev.grpc_routes, |r| &r.metadata);

    // Checks never look across parts, so a part holding the same objects as one of the
    // previous load has the same findings. The trees that position findings are gathered
    // only for the parts checked.
    let (parts, kept) = rev.keep_parts(split.take().filter(|_| same_places));
    *split = Some(kept);
    for part in parts.iter() {
        let findings = validated.get_or_make(part, |part| {
            Arc::new(validate::validate(part, &part_trees(part, files)))
        });
        diags.extend(findings.iter().cloned());
    }
    validated.sweep();

    let has_errors = diags.iter().any(|d| d.severity == super::Severity::Error);
    if !has_errors && rev.services.is_empty() && !opts.allow_empty {
        diags.push(Diagnostic::error(file_pos("."), EMPTY_REVISION));
    }
    diags.sort();
    diags.dedup();
    if diags.iter().any(|d| d.severity == super::Severity::Error) {
        return Err(diags);
    }
    rev.warnings = diags;
    Ok(rev)
}

/// Files of the previous load, parsed: their documents as typed objects with their trees, and
/// the problems found in them. Keyed by path and checked against the whole content, so only a
/// file with exactly the same bytes is reused. Holds only the files of the latest load.
#[derive(Debug, Default)]
pub struct ParseCache {
    /// The limits the entries were parsed with; other limits start afresh.
    limits: Option<(usize, usize)>,
    files: HashMap<String, Parsed>,
    /// The findings of each part of the previous revision (see [`Revision::parts`]).
    validated: PartMemo<Arc<Vec<Diagnostic>>>,
    /// Since the last load, a file came or went, or a changed file defines other objects (kind
    /// and key) than it did, or objects that name others or sort otherwise (see
    /// [`same_placement`]).
    placement_moved: bool,
    /// The last load took every file and found no object defined twice.
    keys_unique: bool,
    /// How the last load split its revision into parts.
    split: Option<Split>,
    /// Files parsed (not reused), duplicate checks made and revisions split afresh, so far.
    #[cfg(test)]
    parsed: usize,
    #[cfg(test)]
    duplicate_checks: usize,
    #[cfg(test)]
    splits: usize,
}

#[derive(Debug)]
struct Parsed {
    bytes: Arc<[u8]>,
    docs: Vec<Loaded>,
    diags: Vec<Diagnostic>,
}

impl ParseCache {
    fn set_limits(&mut self, limits: &yaml::Limits) {
        let key = Some((limits.max_bytes, limits.max_depth));
        if self.limits != key {
            self.files.clear();
            self.validated = PartMemo::default();
            self.limits = key;
        }
    }

    fn parse(&mut self, f: &SourceFile, limits: &yaml::Limits) -> &Parsed {
        let fresh = self
            .files
            .get(&f.path)
            .is_some_and(|parsed| Arc::ptr_eq(&parsed.bytes, &f.bytes) || parsed.bytes == f.bytes);
        if !fresh {
            #[cfg(test)]
            {
                self.parsed += 1;
            }
            let file: Arc<str> = Arc::from(f.path.as_str());
            let mut docs = Vec::new();
            let mut diags = Vec::new();
            match yaml::parse(&file, &f.bytes, limits) {
                Ok(documents) => {
                    for doc in documents {
                        dispatch(&file, doc.root, false, &mut docs, &mut diags);
                    }
                }
                Err(errors) => diags.extend(errors),
            }
            let parsed = Parsed {
                bytes: f.bytes.clone(),
                docs,
                diags,
            };
            let before = self.files.insert(f.path.clone(), parsed);
            self.placement_moved |= before.is_none_or(|before| {
                let after = &self.files[&f.path].docs;
                before.docs.len() != after.len()
                    || !before
                        .docs
                        .iter()
                        .zip(after)
                        .all(|(a, b)| same_placement(a, b))
            });
        }
        &self.files[&f.path]
    }

    /// Forgets files that are not in `files` (deleted or renamed away).
    fn keep_only(&mut self, files: &[&SourceFile]) {
        let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
        let before = self.files.len();
        self.files.retain(|path, _| paths.contains(path.as_str()));
        self.placement_moved |= self.files.len() != before;
    }
}

/// Whether two objects (a file's, before and after it changed) take the same place among the
/// others: the same kind and key, naming the same others (see [`Revision::parts`]), and for
/// routes the same creation time (their precedence order).
fn same_placement(a: &Loaded, b: &Loaded) -> bool {
    fn service(slice: &Object<EndpointSlice>) -> Option<&String> {
        slice.value.metadata.labels.get(SERVICE_NAME_LABEL)
    }
    fn same_route<R: References>(
        a: &Object<R>,
        b: &Object<R>,
        meta: impl Fn(&R) -> &ObjectMeta,
    ) -> bool {
        route_links(a) == route_links(b)
            && validate::creation_time(meta(&a.value)) == validate::creation_time(meta(&b.value))
    }
    if a.kind != b.kind || a.key != b.key {
        return false;
    }
    match (&a.object, &b.object) {
        (Typed::Service(_), Typed::Service(_)) => true,
        (Typed::EndpointSlice(a), Typed::EndpointSlice(b)) => service(a) == service(b),
        (Typed::HttpRoute(a), Typed::HttpRoute(b)) => same_route(a, b, |r| &r.metadata),
        (Typed::GrpcRoute(a), Typed::GrpcRoute(b)) => same_route(a, b, |r| &r.metadata),
        _ => false,
    }
}

/// Gateway API precedence: oldest `creationTimestamp` first (routes without one after those
/// with one), then `namespace/name`.
fn sort_routes<T>(routes: &mut [Arc<Object<T>>], meta: impl Fn(&T) -> &ObjectMeta) {
    routes.sort_by(|a, b| {
        let ta = validate::creation_time(meta(&a.value));
        let tb = validate::creation_time(meta(&b.value));
        let by_time = match (ta, tb) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_time.then_with(|| a.key.cmp(&b.key))
    });
}

/// A typed object, shared between the [`ParseCache`] and every revision that holds it: an
/// object of a file that did not change is the same allocation in the next revision.
#[derive(Clone, Debug)]
enum Typed {
    Service(Arc<Object<Service>>),
    EndpointSlice(Arc<Object<EndpointSlice>>),
    HttpRoute(Arc<Object<HttpRoute>>),
    GrpcRoute(Arc<Object<GrpcRoute>>),
}

impl Typed {
    /// The address of the shared object: who it is, while it is alive.
    fn address(&self) -> usize {
        match self {
            Typed::Service(o) => Arc::as_ptr(o) as usize,
            Typed::EndpointSlice(o) => Arc::as_ptr(o) as usize,
            Typed::HttpRoute(o) => Arc::as_ptr(o) as usize,
            Typed::GrpcRoute(o) => Arc::as_ptr(o) as usize,
        }
    }
}

/// The tree of every object of `part`: its document's, found in the parsed file the object's
/// position names.
fn part_trees(part: &Revision, files: &HashMap<String, Parsed>) -> Trees {
    let mut trees = Trees::new();
    let mut add = |kind: Kind, key: &ObjectKey, pos: &Pos, address: usize| {
        let docs = files.get(&*pos.file).map_or(&[][..], |f| f.docs.as_slice());
        if let Some(doc) = docs.iter().find(|doc| doc.object.address() == address) {
            trees.insert((kind, key.clone()), doc.root.clone());
        }
    };
    for o in part.services.values() {
        add(Kind::Service, &o.key, &o.pos, Arc::as_ptr(o) as usize);
    }
    for o in part.endpoint_slices.values() {
        add(Kind::EndpointSlice, &o.key, &o.pos, Arc::as_ptr(o) as usize);
    }
    for o in &part.http_routes {
        add(Kind::HttpRoute, &o.key, &o.pos, Arc::as_ptr(o) as usize);
    }
    for o in &part.grpc_routes {
        add(Kind::GrpcRoute, &o.key, &o.pos, Arc::as_ptr(o) as usize);
    }
    trees
}

/// One object read from a document, with its tree for positioning later findings.
#[derive(Clone, Debug)]
struct Loaded {
    kind: Kind,
    key: ObjectKey,
    pos: Pos,
    /// Shared with the [`ParseCache`]: a file that did not change costs no tree copy.
    root: Arc<Node>,
    object: Typed,
}

/// A string field of the document root, or why it is not one.
fn type_field<'n>(file: &Arc<str>, root: &'n Node, field: &str) -> Result<&'n str, Diagnostic> {
    match root.get(field) {
        None => Err(Diagnostic::error(
            root.pos(file),
            format!("the document has no {field}; every manifest needs apiVersion and kind"),
        )),
        Some(node) => match &node.kind {
            NodeKind::Scalar { text, .. } if !node.is_null() => Ok(text),
            _ => Err(Diagnostic::error(
                node.pos(file),
                format!("{field}: expected a string, found {}", node.describe()),
            )),
        },
    }
}

fn dispatch(
    file: &Arc<str>,
    mut root: Node,
    in_list: bool,
    docs: &mut Vec<Loaded>,
    diags: &mut Vec<Diagnostic>,
) {
    if !matches!(root.kind, NodeKind::Map(_)) {
        diags.push(Diagnostic::error(
            root.pos(file),
            format!(
                "a manifest document must be a mapping with apiVersion and kind, found {}",
                root.describe()
            ),
        ));
        return;
    }
    let (api_version, kind) = match (
        type_field(file, &root, "apiVersion"),
        type_field(file, &root, "kind"),
    ) {
        (Ok(a), Ok(k)) => (a.to_string(), k.to_string()),
        (a, k) => {
            diags.extend(a.err());
            diags.extend(k.err());
            return;
        }
    };
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let kind = match (api_version.as_str(), kind.as_str()) {
        ("v1", "List") if !in_list => {
            match root.get("items") {
                Some(Node {
                    kind: NodeKind::Seq(items),
                    ..
                }) => {
                    for item in items.clone() {
                        dispatch(file, item, true, docs, diags);
                    }
                }
                Some(n) if n.is_null() => {}
                Some(n) => diags.push(Diagnostic::error(
                    n.pos(file),
                    format!("items: expected a list, found {}", n.describe()),
                )),
                None => {}
            }
            return;
        }
        ("v1", "Service") => Kind::Service,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => Kind::HttpRoute,
        ("gateway.networking.k8s.io/v1", "GRPCRoute") => Kind::GrpcRoute,
        (_, k @ ("EndpointSlice" | "HTTPRoute" | "GRPCRoute"))
            if matches!(group, "discovery.k8s.io" | "gateway.networking.k8s.io") =>
        {
            let wanted = if k == "EndpointSlice" {
                "discovery.k8s.io/v1"
            } else {
                "gateway.networking.k8s.io/v1"
            };
            let pos = root.get("apiVersion").unwrap_or(&root).pos(file);
            diags.push(Diagnostic::error(
                pos,
                format!("apiVersion: {k} {api_version:?} is not supported; use {wanted}"),
            ));
            return;
        }
        _ => return,
    };
    if let NodeKind::Map(entries) = &mut root.kind {
        entries.retain(|(k, _)| !matches!(k.scalar(), Some("apiVersion" | "kind" | "status")));
    }
    let pos = root.pos(file);
    let typed = match kind {
        Kind::Service => typed(file, &root, &pos, Typed::Service),
        Kind::EndpointSlice => typed(file, &root, &pos, Typed::EndpointSlice),
        Kind::HttpRoute => typed(file, &root, &pos, Typed::HttpRoute),
        Kind::GrpcRoute => typed(file, &root, &pos, Typed::GrpcRoute),
    };
    match typed {
        Ok((object, key)) => docs.push(Loaded {
            kind,
            key,
            pos,
            root: Arc::new(root),
            object,
        }),
        Err(e) => diags.push(e),
    }
}

/// Deserializes one object and returns it, shared, with its key.
fn typed<T>(
    file: &Arc<str>,
    root: &Node,
    pos: &Pos,
    wrap: fn(Arc<Object<T>>) -> Typed,
) -> Result<(Typed, ObjectKey), Diagnostic>
where
    T: for<'de> Deserialize<'de> + HasMeta,
{
    let value: T = de::from_node(root, file).map_err(|e| e.to_diagnostic(file))?;
    let meta = value.meta();
    let key = ObjectKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone(),
    );
    let object = Object {
        key: key.clone(),
        pos: pos.clone(),
        value,
    };
    Ok((wrap(Arc::new(object)), key))
}

trait HasMeta {
    fn meta(&self) -> &ObjectMeta;
}

impl HasMeta for Service {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}
impl HasMeta for EndpointSlice {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}
impl HasMeta for HttpRoute {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}
impl HasMeta for GrpcRoute {
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: grpc, port: 9090, appProtocol: grpc}\n---\n";

    fn load(text: &str) -> Result<Revision, Vec<String>> {
        let files = [SourceFile {
            path: "t.yaml".into(),
            bytes: text.as_bytes().into(),
        }];
        load_files(&files, &LoadOptions::default())
            .map_err(|diags| diags.iter().map(|d| d.to_string()).collect())
    }

    fn errors(text: &str) -> Vec<String> {
        match load(text) {
            Ok(rev) => panic!("loaded, with warnings {:?}", rev.warnings),
            Err(e) => e,
        }
    }

    /// A one-rule HTTPRoute on Service echo with `rule` (indented as a rule's fields).
    fn route(rule: &str) -> String {
        format!(
            "{ECHO}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, port: 80}}\n  rules:\n  - {}\n",
            rule.trim_start().replace('\n', "\n    ")
        )
    }

    /// Replaces `path` by a rename of a new file holding `text`, with the old file's
    /// modification time: only the inode (and change time) tells them apart.
    fn replace_keeping_mtime(path: &Path, text: &str) {
        let modified = fs::metadata(path)
            .and_then(|m| m.modified())
            .expect("mtime");
        let swap = path.with_extension("new");
        fs::write(&swap, text).expect("write");
        fs::File::options()
            .write(true)
            .open(&swap)
            .and_then(|f| f.set_modified(modified))
            .expect("set mtime");
        fs::rename(&swap, path).expect("rename");
    }

    #[test]
    fn cached_reads_read_only_files_whose_stamp_moved() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: &str| {
            fs::write(dir.path().join(name), text).expect("write");
        };
        write("a.yaml", ECHO);
        write("b.yaml", &ECHO.replace("name: echo", "name: other"));
        let opts = LoadOptions::default();
        let mut cache = ReadCache::default();
        let mut reads = Vec::new();
        let mut check = |cache: &mut ReadCache| {
            let before = cache.reads;
            let cached = read_dir_cached(dir.path(), &opts, cache).expect("reads");
            let fresh = read_dir(dir.path(), &opts).expect("reads");
            assert_eq!(cached, fresh, "a cached read differs");
            reads.push(cache.reads - before);
        };
        check(&mut cache);
        check(&mut cache);
        // Rewritten in place with the same length.
        write("a.yaml", &ECHO.replace("port: 80", "port: 81"));
        check(&mut cache);
        // Replaced by a rename with the same length and modification time: a new inode.
        replace_keeping_mtime(
            &dir.path().join("a.yaml"),
            &ECHO.replace("port: 80", "port: 82"),
        );
        check(&mut cache);
        // Removed: forgotten.
        fs::remove_file(dir.path().join("b.yaml")).expect("remove");
        check(&mut cache);
        assert_eq!(reads, [2, 0, 1, 1, 0]);
        assert_eq!(cache.files.len(), 1);
    }

    #[test]
    fn a_listing_fingerprint_moves_with_every_change_that_matters() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("mesh");
        fs::create_dir(&root).expect("mkdir");
        let opts = LoadOptions::default();
        let fingerprint = || list_dir(&root, &opts).expect("lists").fingerprint();
        let mut seen = vec![fingerprint()];
        let mut step = |moved: bool, what: &str| {
            let now = fingerprint();
            let last = *seen.last().expect("a fingerprint");
            assert_eq!(now != last, moved, "{what}");
            if moved {
                assert!(
                    !seen.contains(&now),
                    "{what}: back to an earlier fingerprint"
                );
            }
            seen.push(now);
        };
        step(false, "nothing changed");
        fs::write(root.join("a.yaml"), ECHO).expect("write");
        step(true, "a file added");
        fs::write(root.join("notes.txt"), "x").expect("write");
        fs::write(root.join(".a.yaml.swp"), "x").expect("write");
        step(false, "files that are not read");
        fs::write(root.join("a.yaml"), ECHO.replace("port: 80", "port: 81")).expect("write");
        step(true, "rewritten in place with the same length");
        replace_keeping_mtime(&root.join("a.yaml"), &ECHO.replace("port: 80", "port: 82"));
        step(true, "replaced by a rename with the same length and mtime");
        fs::create_dir(root.join("sub")).expect("mkdir");
        step(false, "an empty folder");
        fs::write(root.join("sub/b.yaml"), ECHO).expect("write");
        step(true, "a file in a subfolder");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("c.yaml", root.join("link.yaml")).expect("symlink");
            step(true, "a dangling symlink (an error of the listing)");
            fs::write(root.join("c.yaml"), ECHO).expect("write");
            step(true, "its target created");
            fs::write(root.join("c.yaml"), ECHO.replace("port: 80", "port: 83")).expect("write");
            step(true, "its target rewritten");
            // The folder itself swapped to another: the resolved root moved.
            let other = dir.path().join("other");
            fs::create_dir(&other).expect("mkdir");
            let link = dir.path().join("current");
            std::os::unix::fs::symlink(&root, &link).expect("symlink");
            let first = list_dir(&link, &opts).expect("lists").fingerprint();
            fs::remove_file(&link).expect("unlink");
            std::os::unix::fs::symlink(&other, &link).expect("symlink");
            assert_ne!(list_dir(&link, &opts).expect("lists").fingerprint(), first);
        }
        fs::remove_file(root.join("sub/b.yaml")).expect("remove");
        step(true, "a file removed");
    }

    #[test]
    fn a_listing_updated_from_the_paths_that_changed_is_the_walks_or_asks_for_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("mesh");
        fs::create_dir_all(root.join("sub")).expect("mkdir");
        fs::write(root.join("a.yaml"), ECHO).expect("write");
        fs::write(root.join("sub/b.yaml"), ECHO).expect("write");
        let opts = LoadOptions::default();
        let mut listing = list_dir(&root, &opts).expect("lists");
        let names = |l: &Listing| -> Vec<String> { l.found.iter().map(|f| f.0.clone()).collect() };
        // After each change: told from the paths alone exactly as a walk lists the folder, or
        // (`walk`) not told at all.
        let mut step = |changed: &[&str], walk: bool, what: &str| {
            let updated = listing.updated(changed.iter().map(Path::new));
            let walked = list_dir(&root, &opts).expect("lists");
            match updated {
                Some(updated) => {
                    assert!(!walk, "{what}: told without a walk");
                    assert_eq!(names(&updated), names(&walked), "{what}");
                    assert_eq!(updated.fingerprint(), walked.fingerprint(), "{what}");
                    assert_eq!(updated.dirs, walked.dirs, "{what}");
                }
                None => assert!(walk, "{what}: asked for a walk"),
            }
            listing = walked;
        };
        let other = ECHO.replace("port: 80", "port: 81");
        fs::write(root.join("a.yaml"), &other).expect("write");
        step(&["a.yaml"], false, "rewritten in place");
        replace_keeping_mtime(&root.join("a.yaml"), ECHO);
        step(&["a.new", "a.yaml"], false, "replaced by a rename");
        fs::write(root.join("c.yaml"), ECHO).expect("write");
        fs::write(root.join("sub/d.yml"), ECHO).expect("write");
        step(&["c.yaml", "sub/d.yml"], false, "created");
        fs::rename(root.join("c.yaml"), root.join("sub/c.yaml")).expect("rename");
        step(&["c.yaml", "sub/c.yaml"], false, "moved to a subfolder");
        fs::remove_file(root.join("sub/d.yml")).expect("remove");
        step(&["sub/d.yml"], false, "removed");
        step(
            &["a.yaml", "gone.yaml", "sub"],
            false,
            "named but unchanged",
        );
        fs::write(root.join("notes.txt"), "x").expect("write");
        fs::create_dir(root.join(".hidden")).expect("mkdir");
        fs::write(root.join(".hidden/x.yaml"), ECHO).expect("write");
        fs::write(root.join("sub/.x.yaml.swp"), "x").expect("write");
        step(
            &["notes.txt", ".hidden", ".hidden/x.yaml", "sub/.x.yaml.swp"],
            false,
            "not read",
        );
        step(
            &["", "../mesh/a.yaml", "/a.yaml"],
            true,
            "not below the folder",
        );

        fs::create_dir(root.join("new")).expect("mkdir");
        fs::write(root.join("new/e.yaml"), ECHO).expect("write");
        step(&["new", "new/e.yaml"], true, "a folder created");
        fs::write(root.join("new/e.yaml"), &other).expect("write");
        step(&["new/e.yaml"], false, "a file in it, once walked");
        fs::remove_dir_all(root.join("new")).expect("remove");
        step(&["new/e.yaml", "new"], true, "a folder removed");
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).expect("mkdir");
        fs::write(outside.join("f.yaml"), ECHO).expect("write");
        fs::rename(&outside, root.join("moved")).expect("rename");
        step(&["moved"], true, "a folder moved in");
        fs::rename(root.join("moved"), &outside).expect("rename");
        step(&["moved"], true, "a folder moved out");
        fs::write(root.join("new"), "x").expect("write");
        step(&["new"], false, "a file without a manifest name");
        fs::remove_file(root.join("new")).expect("remove");
        step(&["new"], false, "and removed");
        #[cfg(unix)]
        {
            fs::hard_link(root.join("a.yaml"), root.join("h.yaml")).expect("link");
            step(&["h.yaml"], true, "a hard link");
            fs::write(root.join("a.yaml"), ECHO).expect("write");
            step(&["a.yaml"], true, "a file with two links");
            fs::remove_file(root.join("h.yaml")).expect("remove");
            step(
                &["h.yaml"],
                true,
                "hard link removed (the walk before saw two links)",
            );
            std::os::unix::fs::symlink("a.yaml", root.join("l.yaml")).expect("symlink");
            step(&["l.yaml"], true, "a symlink");
            fs::write(root.join("a.yaml"), &other).expect("write");
            step(&["a.yaml"], true, "the target of a symlink");
            fs::remove_file(root.join("l.yaml")).expect("remove");
            step(
                &["l.yaml"],
                true,
                "symlink removed (the walk before followed one)",
            );
            fs::write(root.join("a.yaml"), ECHO).expect("write");
            step(&["a.yaml"], false, "plain again");
        }
    }

    #[test]
    fn cached_loads_parse_only_changed_files_and_equal_fresh_loads() {
        let file = |path: &str, text: &str| SourceFile {
            path: path.into(),
            bytes: text.as_bytes().into(),
        };
        let other = ECHO.replace("name: echo", "name: other");
        let broken = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [\n";
        let opts = LoadOptions::default();
        let revisions = [
            vec![file("a.yaml", ECHO), file("b.yaml", &other)],
            // Unchanged: nothing parsed.
            vec![file("a.yaml", ECHO), file("b.yaml", &other)],
            // One file breaks, then is fixed; one is renamed.
            vec![file("a.yaml", ECHO), file("b.yaml", broken)],
            vec![file("a.yaml", ECHO), file("c.yaml", &other)],
            // The same content under the old name again: parsed, its path was forgotten.
            vec![file("a.yaml", ECHO), file("b.yaml", &other)],
        ];
        let mut cache = ParseCache::default();
        let (mut parsed, mut validated) = (Vec::new(), Vec::new());
        for files in &revisions {
            let (before, validated_before) = (cache.parsed, cache.validated.made());
            let cached = load_files_cached(files, &opts, &mut cache);
            assert_eq!(cached, load_files(files, &opts), "cached load differs");
            parsed.push(cache.parsed - before);
            validated.push(cache.validated.made() - validated_before);
        }
        assert_eq!(parsed, [2, 0, 1, 1, 1]);
        // Each Service is a part of its own; only parts with new objects are checked again.
        assert_eq!(validated, [2, 0, 0, 1, 1]);

        assert_eq!(
            cache.files.len(),
            2,
            "only the latest load's files are kept"
        );

        // Other limits: everything is parsed again, and the limits hold.
        let tight = LoadOptions {
            max_depth: 2,
            ..LoadOptions::default()
        };
        let before = cache.parsed;
        assert!(load_files_cached(&revisions[0], &tight, &mut cache).is_err());
        assert_eq!(cache.parsed - before, 2);

        // A route naming a Service that is missing, then added in another file: the route's
        // part changes with it, so its findings do too.
        let route = route("{backendRefs: [{name: late, port: 80}]}");
        let late = ECHO.replace("name: echo", "name: late");
        let mut loads = Vec::new();
        for files in [
            vec![file("r.yaml", &route)],
            vec![file("r.yaml", &route), file("l.yaml", &late)],
            vec![file("r.yaml", &route)],
        ] {
            let cached = load_files_cached(&files, &opts, &mut cache);
            assert_eq!(cached, load_files(&files, &opts), "cached load differs");
            loads.push(cached.is_ok());
        }
        assert_eq!(loads, [false, true, false]);
    }

    #[test]
    fn cached_loads_look_for_objects_defined_twice_only_when_the_objects_may_have_moved() {
        let file = |path: &str, text: &str| SourceFile {
            path: path.into(),
            bytes: text.as_bytes().into(),
        };
        let other = ECHO.replace("name: echo", "name: other");
        let port = |text: &str, port: &str| text.replace("port: 80", port);
        let (a, b) = (
            file("a.yaml", ECHO),
            file("b.yaml", &port(&other, "port: 82")),
        );
        let opts = LoadOptions::default();
        let revisions = [
            vec![file("a.yaml", ECHO), file("b.yaml", &other)],
            // Edited, defining the same objects: no object can be defined twice now.
            vec![
                file("a.yaml", ECHO),
                file("b.yaml", &port(&other, "port: 81")),
            ],
            // Defining another object: looked for, and found.
            vec![file("a.yaml", ECHO), file("b.yaml", ECHO)],
            // Edited, after a load that found one: looked for again.
            vec![
                file("a.yaml", ECHO),
                file("b.yaml", &port(ECHO, "port: 81")),
            ],
            vec![file("a.yaml", ECHO), file("b.yaml", &other)],
            vec![a.clone(), b.clone()],
            // A file comes, then goes.
            vec![a.clone(), b.clone(), file("c.yaml", ECHO)],
            vec![a.clone(), b.clone()],
            vec![a, b],
        ];
        let mut cache = ParseCache::default();
        let (mut checks, mut loaded) = (Vec::new(), Vec::new());
        for files in &revisions {
            let before = cache.duplicate_checks;
            let cached = load_files_cached(files, &opts, &mut cache);
            assert_eq!(cached, load_files(files, &opts), "cached load differs");
            checks.push(cache.duplicate_checks - before);
            loaded.push(cached.is_ok());
        }
        assert_eq!(checks, [1, 0, 1, 1, 1, 0, 1, 1, 0]);
        assert_eq!(
            loaded,
            [true, true, false, false, true, true, false, true, true]
        );
    }

    #[test]
    fn cached_loads_split_again_only_when_objects_may_link_up_otherwise() {
        let file = |path: &str, text: &str| SourceFile {
            path: path.into(),
            bytes: text.as_bytes().into(),
        };
        let other = ECHO.replace("name: echo", "name: other");
        let route = |backends: &str, meta: &str| {
            format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: r\n{meta}spec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, port: 80}}\n  rules:\n  - backendRefs: [{backends}]\n")
        };
        let slice = |service: &str, address: &str| {
            format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: s\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nendpoints:\n- addresses: [{address}]\nports:\n- {{name: http, port: 8080}}\n")
        };
        let one = "{name: echo, port: 80}";
        let two = |weight: u32| {
            format!("{{name: echo, port: 80}}, {{name: other, port: 80, weight: {weight}}}")
        };
        let created = "  creationTimestamp: \"2024-01-01T00:00:00Z\"\n";
        let (a, b) = (file("a.yaml", ECHO), file("b.yaml", &other));
        let revisions = [
            vec![a.clone(), b.clone(), file("r.yaml", &route(one, ""))],
            // A route gains a backend: it links `other` in.
            vec![a.clone(), b.clone(), file("r.yaml", &route(&two(1), ""))],
            // A weight moves: the same links.
            vec![a.clone(), b.clone(), file("r.yaml", &route(&two(2), ""))],
            // A creation time: the route's precedence may move.
            vec![
                a.clone(),
                b.clone(),
                file("r.yaml", &route(&two(2), created)),
            ],
            // A slice comes, moves to another Service, changes an address.
            vec![
                a.clone(),
                b.clone(),
                file("r.yaml", &route(one, created)),
                file("s.yaml", &slice("other", "10.0.0.1")),
            ],
            vec![
                a.clone(),
                b.clone(),
                file("r.yaml", &route(one, created)),
                file("s.yaml", &slice("echo", "10.0.0.1")),
            ],
            vec![
                a,
                b,
                file("r.yaml", &route(one, created)),
                file("s.yaml", &slice("echo", "10.0.0.2")),
            ],
        ];
        let grouping = |revision: &Revision| -> Vec<Vec<String>> {
            let parts = revision.parts();
            (parts.iter())
                .map(|part| {
                    let services = part.services.iter().map(|o| format!("svc {}", o.key));
                    let slices = part
                        .endpoint_slices
                        .iter()
                        .map(|o| format!("slice {}", o.key));
                    let routes = part.http_routes.iter().map(|o| format!("route {}", o.key));
                    services.chain(slices).chain(routes).collect()
                })
                .collect()
        };
        let opts = LoadOptions::default();
        let mut cache = ParseCache::default();
        let mut splits = Vec::new();
        for files in &revisions {
            let before = cache.splits;
            let cached = load_files_cached(files, &opts, &mut cache).expect("loads");
            let fresh = load_files(files, &opts).expect("loads");
            assert_eq!(cached, fresh, "cached load differs");
            assert_eq!(grouping(&cached), grouping(&fresh), "parts differ");
            splits.push(cache.splits - before);
        }
        assert_eq!(splits, [1, 1, 0, 1, 1, 1, 0]);
    }

    #[test]
    fn exported_objects_load_with_status_and_defaults() {
        let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  uid: 1234\n  resourceVersion: \"99\"\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\nspec:\n  type: ClusterIP\n  clusterIP: 10.0.0.10\n  ports:\n  - port: 80\n    protocol: TCP\nstatus:\n  loadBalancer: {}\n";
        let errs = errors(text);
        // `uid: 1234` is a number where a string is expected: exported YAML quotes it.
        assert_eq!(
            errs,
            ["t.yaml:5:8: error: metadata.uid: 1234 is read by YAML as a number, not a string; quote it (\"1234\")"]
        );
        let rev = load(&text.replace("uid: 1234", "uid: \"1234\"")).expect("loads");
        let svc = &rev.services[&ObjectKey::new("default", "echo")];
        assert_eq!(svc.key.namespace, "default");
        assert_eq!(svc.pos.to_string(), "t.yaml:1:1");
    }

    #[test]
    fn lists_versions_and_other_kinds() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: a}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n";
        let rev = load(list).expect("loads");
        assert_eq!(rev.services.len(), 1);
        assert_eq!(
            rev.services
                .values()
                .next()
                .map(|s| s.pos.to_string())
                .as_deref(),
            Some("t.yaml:4:3")
        );

        let old = format!("{ECHO}apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec: {{}}\n");
        assert_eq!(
            errors(&old),
            ["t.yaml:10:13: error: apiVersion: HTTPRoute \"gateway.networking.k8s.io/v1beta1\" is not supported; use gateway.networking.k8s.io/v1"]
        );
        // A Knative Service is another kind altogether: skipped.
        let knative = format!("{ECHO}apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: k}}\nspec: {{template: {{}}}}\n");
        assert_eq!(load(&knative).expect("loads").services.len(), 1);

        assert_eq!(
            errors("- a\n- b\n"),
            ["t.yaml:1:1: error: a manifest document must be a mapping with apiVersion and kind, found a list"]
        );
        assert_eq!(
            errors("apiVersion: v1\nkind: [Service]\n"),
            ["t.yaml:2:7: error: kind: expected a string, found a list"]
        );
    }

    #[test]
    fn routes_are_sorted_in_gateway_api_precedence() {
        let mut text = String::from(ECHO);
        for (ns, name, ts) in [
            ("b", "r1", None),
            ("a", "r3", Some("2024-03-01T00:00:00Z")),
            ("a", "r1", None),
            ("z", "r9", Some("2024-01-01T00:00:00Z")),
            ("a", "r2", Some("2024-03-01T00:00:00Z")),
        ] {
            text.push_str(&format!(
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: {name}\n  namespace: {ns}\n"
            ));
            if let Some(ts) = ts {
                text.push_str(&format!("  creationTimestamp: \"{ts}\"\n"));
            }
            text.push_str("spec: {}\n");
        }
        let rev = load(&text).expect("loads");
        let order: Vec<String> = rev.http_routes.iter().map(|r| r.key.to_string()).collect();
        assert_eq!(order, ["z/r9", "a/r2", "a/r3", "a/r1", "b/r1"]);
    }

    #[test]
    fn duplicates_are_per_kind() {
        let same_name = format!(
            "{ECHO}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec: {{}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: r}}\nspec: {{}}\n"
        );
        assert!(load(&same_name).is_ok());
        let twice = format!(
            "{ECHO}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec: {{}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: default}}\nspec: {{}}\n"
        );
        assert_eq!(
            errors(&twice),
            ["t.yaml:15:1: error: HTTPRoute default/r is defined twice: here and in t.yaml:10:1"]
        );
    }

    #[test]
    fn service_ports() {
        let svc = |ports: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  ports:\n{ports}"
            )
        };
        assert_eq!(
            errors(&svc("  - {port: 80, targetPort: http}\n")),
            ["t.yaml:6:28: error: spec.ports[0].targetPort: named targetPort \"http\" is not supported: sidecars do not announce their container ports; give the port number"]
        );
        assert_eq!(
            errors(&svc("  - {port: 80, targetPort: \"8080\"}\n")),
            ["t.yaml:6:28: error: spec.ports[0].targetPort: targetPort \"8080\" is quoted: write it as a number"]
        );
        assert_eq!(
            errors(&svc("  - {name: a, port: 80}\n  - {name: b, port: 80, protocol: UDP}\n  - {port: 81, targetPort: 0}\n")),
            [
                "t.yaml:7:21: error: spec.ports[1].port: port 80 is declared twice in Service default/s (first in spec.ports[0])",
                "t.yaml:7:35: error: spec.ports[1].protocol: protocol \"UDP\" is not supported: Sluice routes TCP (HTTP and gRPC)",
                "t.yaml:8:6: error: spec.ports[2]: every port needs a name when a Service has more than one port",
                "t.yaml:8:28: error: spec.ports[2].targetPort: 0 is not a valid targetPort (1..65535)",
            ]
        );
    }

    #[test]
    fn endpoint_slices() {
        let text = format!(
            "{ECHO}apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: vm\n  labels: {{kubernetes.io/service-name: echo}}\naddressType: IPv4\nendpoints:\n- addresses: [10.0.0.1, \"::1\", vm.example.com]\n- addresses: []\nports:\n- {{name: http, port: 8080}}\n- {{name: http, port: 0}}\n"
        );
        assert_eq!(
            errors(&text),
            [
                "t.yaml:17:25: error: endpoints[0].addresses[1]: \"::1\" is not an IPv4 address",
                "t.yaml:17:32: error: endpoints[0].addresses[2]: \"vm.example.com\" is not an IPv4 address",
                "t.yaml:18:14: error: endpoints[1].addresses: an endpoint needs 1 to 100 addresses, found 0",
                "t.yaml:21:10: error: ports[1].name: port name \"http\" is used twice (first in ports[0])",
                "t.yaml:21:22: error: ports[1].port: 0 is not a valid port (1..65535)",
            ]
        );
        let fqdn = text
            .replace("addressType: IPv4", "addressType: FQDN")
            .replace(", \"::1\", vm.example.com", "")
            .replace("- addresses: []\n", "")
            .replace("- {name: http, port: 0}\n", "");
        assert_eq!(
            errors(&fqdn),
            ["t.yaml:15:14: error: addressType: addressType \"FQDN\" is not supported: Envoy endpoints need IP addresses (IPv4 or IPv6)"]
        );
    }

    #[test]
    fn parent_refs() {
        let with_parents = |parents: &str| {
            format!("{ECHO}apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n  parentRefs:\n{parents}")
        };
        assert_eq!(
            errors(&with_parents(
                "  - {group: \"\", kind: Service, name: nope}\n  - {kind: Service, name: echo}\n  - {group: \"\", kind: Service, name: echo, port: 81, sectionName: http}\n  - {name: my-gateway}\n"
            )),
            [
                "t.yaml:15:6: error: spec.parentRefs[0]: parentRef \"nope\" of HTTPRoute default/r does not name a Service in namespace \"default\"",
                "t.yaml:16:6: error: spec.parentRefs[1]: a Service parent needs group \"\" (the core API group); without it the group defaults to gateway.networking.k8s.io",
                "t.yaml:17:50: error: spec.parentRefs[2].port: Service default/echo has no port 81; its ports are 80, 9090",
                "t.yaml:17:67: error: spec.parentRefs[2].sectionName: \"http\": sectionName is not supported for a Service parent; use port",
            ]
        );
        let hostnames = with_parents(
            "  - {group: \"\", kind: Service, name: echo}\n  hostnames: [echo.example.com]\n",
        );
        assert_eq!(
            errors(&hostnames),
            ["t.yaml:16:14: error: spec.hostnames: not supported on a route attached to a Service: the Service itself selects the requests; remove the field"]
        );
    }

    #[test]
    fn backend_refs() {
        assert_eq!(
            errors(&route("backendRefs:\n- {name: echo}\n- {name: echo, port: 81}\n- {group: apps, kind: Deployment, name: echo, port: 80}\n- {name: echo, port: 80, weight: 5000000}\n")),
            [
                "t.yaml:19:8: error: spec.rules[0].backendRefs[0]: backendRef \"echo\" needs a port: Gateway API requires one for a Service backend",
                "t.yaml:20:26: error: spec.rules[0].backendRefs[1].port: Service default/echo has no port 81; its ports are 80, 9090",
                "t.yaml:21:15: error: spec.rules[0].backendRefs[2].group: group \"apps\" is not supported: a backend must be a core Service (group \"\")",
                "t.yaml:21:27: error: spec.rules[0].backendRefs[2].kind: kind \"Deployment\" is not supported: a backend must be a Service",
                "t.yaml:22:38: error: spec.rules[0].backendRefs[3].weight: weight 5000000 is above the maximum of 1000000",
            ]
        );
        // A weight-0 backend to a missing Service is only a warning, returned with the revision.
        let rev = load(&route(
            "backendRefs:\n- {name: echo, port: 80}\n- {name: gone, port: 80, weight: 0}\n",
        ))
        .expect("loads");
        assert_eq!(
            rev.warnings.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["t.yaml:20:8: warning: spec.rules[0].backendRefs[1]: backendRef \"gone\" of HTTPRoute default/r does not name a Service in namespace \"default\" (its weight is 0, so no request goes there)"]
        );
    }

    #[test]
    fn filters() {
        assert_eq!(
            errors(&route("filters:\n- type: RequestRedirect\n  urlRewrite: {hostname: x}\n- type: RequestRedirect\n  requestRedirect: {statusCode: 399, scheme: ftp}\nbackendRefs:\n- {name: echo, port: 80}\n")),
            [
                "t.yaml:19:7: error: spec.rules[0].filters[0]: a filter of type RequestRedirect needs the field requestRedirect",
                "t.yaml:20:20: error: spec.rules[0].filters[0].urlRewrite: urlRewrite does not belong in a filter of type RequestRedirect",
                "t.yaml:21:13: error: spec.rules[0].filters[1].type: filter RequestRedirect appears twice (first in spec.rules[0].filters[0])",
                "t.yaml:22:37: error: spec.rules[0].filters[1].requestRedirect.statusCode: 399 is not one of 301, 302, 303, 307, 308",
                "t.yaml:22:50: error: spec.rules[0].filters[1].requestRedirect.scheme: \"ftp\" must be \"http\" or \"https\"",
                "t.yaml:24:7: error: spec.rules[0].backendRefs: a rule with a RequestRedirect filter cannot have backendRefs",
            ]
        );
        assert_eq!(
            errors(&route("matches:\n- path: {type: Exact, value: /a}\nfilters:\n- type: URLRewrite\n  urlRewrite:\n    path: {type: ReplacePrefixMatch, replacePrefixMatch: /b, replaceFullPath: /c}\n- type: RequestMirror\n  requestMirror:\n    backendRef: {name: shadow, port: 80}\n    percent: 101\nbackendRefs:\n- {name: echo, port: 80}\n")),
            [
                "t.yaml:21:7: error: spec.rules[0].filters[0]: replacePrefixMatch needs a rule with exactly one PathPrefix match",
                "t.yaml:23:83: error: spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: not allowed with type ReplacePrefixMatch",
                "t.yaml:26:22: error: spec.rules[0].filters[1].requestMirror.backendRef: mirror backendRef \"shadow\" of HTTPRoute default/r does not name a Service in namespace \"default\"",
                "t.yaml:27:18: error: spec.rules[0].filters[1].requestMirror.percent: 101 is more than 100",
            ]
        );
    }

    #[test]
    fn grpc_routes() {
        let grpc = |rule: &str| {
            format!(
                "{ECHO}apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g}}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, port: 9090}}\n  rules:\n  - {}\n",
                rule.trim_start().replace('\n', "\n    ")
            )
        };
        let ok = grpc("matches:\n- method: {service: pkg.v1.Echo, method: Say}\n  headers: [{name: x-a, value: b}]\nbackendRefs:\n- {name: echo, port: 9090}\n");
        let rev = load(&ok).expect("loads");
        assert_eq!(rev.grpc_routes.len(), 1);
        assert_eq!(
            errors(&grpc("matches:\n- method: {service: \"pkg v1\", method: \"Say.Hi\"}\n- method: {}\n- method: {type: RegularExpression, method: \"Get(\"}\nfilters:\n- type: RequestRedirect\n  requestRedirect: {statusCode: 301}\nbackendRefs:\n- {name: echo, port: 9090}\n")),
            [
                "t.yaml:18:25: error: spec.rules[0].matches[0].method.service: \"pkg v1\" is not a gRPC service name (such as \"pkg.v1.Echo\")",
                "t.yaml:18:43: error: spec.rules[0].matches[0].method.method: \"Say.Hi\" is not a gRPC method name (such as \"Echo\")",
                "t.yaml:19:15: error: spec.rules[0].matches[1].method: a method match needs a service, a method or both",
                "t.yaml:20:49: error: spec.rules[0].matches[2].method.method: \"Get(\" is not a valid regular expression: unclosed group",
                "t.yaml:22:13: error: spec.rules[0].filters[0].type: filter RequestRedirect is not supported in a GRPCRoute",
            ]
        );
    }

    #[test]
    fn matches_paths_and_limits() {
        assert_eq!(
            errors(&route("matches:\n- path: {value: api}\n- path: {type: Exact, value: /a//b}\n- path: {value: /a/../b}\n- queryParams: [{name: q, value: a}, {name: q, value: b}]\n  headers: [{name: X-A, value: a}, {name: x-a, value: b}]\nbackendRefs:\n- {name: echo, port: 80}\n")),
            [
                "t.yaml:19:21: error: spec.rules[0].matches[0].path.value: \"api\" must start with '/'",
                "t.yaml:20:34: error: spec.rules[0].matches[1].path.value: \"/a//b\" contains '//' (not allowed for type Exact)",
                "t.yaml:21:21: error: spec.rules[0].matches[2].path.value: \"/a/../b\" contains a '..' segment (not allowed for type PathPrefix)",
                "t.yaml:22:49: error: spec.rules[0].matches[3].queryParams[1].name: query parameter \"q\" is matched twice (first in spec.rules[0].matches[3].queryParams[0])",
                "t.yaml:23:47: error: spec.rules[0].matches[3].headers[1].name: header \"x-a\" is matched twice (first in spec.rules[0].matches[3].headers[0])",
            ]
        );
        let many: String = (0..17)
            .map(|i| format!("- {{name: echo, port: 80, weight: {i}}}\n"))
            .collect();
        let errs = errors(&route(&format!("backendRefs:\n{many}")));
        assert_eq!(
            errs,
            ["t.yaml:19:7: error: spec.rules[0].backendRefs: 17 backendRefs, above Gateway API's limit of 16"]
        );
    }
}
