//! Reading a commit's manifests straight from the object database, without a worktree.
//!
//! The rules are those of [`manifest::read_dir`], so `sluice validate` on a checkout and
//! `sluice serve --repo` read the same files: only `*.yaml`/`*.yml` below `--path`, hidden entries
//! skipped, the [`LoadOptions`] limits checked on blob sizes before any blob is read. Symlinks are
//! followed when they are relative and resolve inside `--path`; an absolute one, one that leaves
//! `--path`, a dangling one or a loop is an error (BAD_INPUT case 18). Submodules are skipped with
//! a warning: their commits are not in this repository.
//!
//! Objects are content-addressed, so what is read is one whole commit by construction: a push
//! or a force-push while reading cannot mix two revisions (BAD_INPUT case 21).

use std::collections::HashMap;
use std::sync::Arc;

use gix::objs::tree::EntryKind;
use gix::ObjectId;
use tracing::warn;

use crate::manifest::{self, Diagnostic, LoadOptions, Pos, SourceFile};

/// How many symlinks one path may go through before it counts as a loop (Linux's own limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// One entry of a tree, decoded and owned.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The raw name: Git allows any bytes but `/` and NUL.
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub id: ObjectId,
}

/// The objects a commit's tree is read from: the object database, or a fake in unit tests.
pub trait Objects {
    fn tree(&self, id: ObjectId) -> Result<Vec<Entry>, String>;
    fn blob_size(&self, id: ObjectId) -> Result<u64, String>;
    fn blob(&self, id: ObjectId) -> Result<Vec<u8>, String>;
}

impl Objects for gix::Repository {
    fn tree(&self, id: ObjectId) -> Result<Vec<Entry>, String> {
        let tree = self
            .find_tree(id)
            .map_err(|e| format!("cannot read tree {id}: {e}"))?;
        let decoded = tree
            .decode()
            .map_err(|e| format!("cannot decode tree {id}: {e}"))?;
        Ok(decoded
            .entries
            .iter()
            .map(|e| Entry {
                name: e.filename.to_vec(),
                kind: EntryKind::from(e.mode),
                id: e.oid.to_owned(),
            })
            .collect())
    }

    fn blob_size(&self, id: ObjectId) -> Result<u64, String> {
        self.find_header(id)
            .map(|h| h.size())
            .map_err(|e| format!("cannot read blob {id}: {e}"))
    }

    fn blob(&self, id: ObjectId) -> Result<Vec<u8>, String> {
        self.find_blob(id)
            .map(|mut b| b.take_data())
            .map_err(|e| format!("cannot read blob {id}: {e}"))
    }
}

/// The tree id of a commit.
pub fn commit_tree(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, String> {
    let commit = repo
        .find_commit(commit)
        .map_err(|e| format!("cannot read commit {commit}: {e}"))?;
    commit
        .tree_id()
        .map(|id| id.detach())
        .map_err(|e| format!("cannot read the tree of commit {}: {e}", commit.id))
}

/// What the walk found: a manifest file, with the path it is shown under and its blob.
struct Found {
    path: String,
    id: ObjectId,
    size: u64,
}

/// A folder to walk: its tree, its path as shown, and the resolved paths of itself and its
/// ancestors (to find symlink loops).
struct Dir {
    tree: ObjectId,
    shown: Vec<String>,
    chain: Vec<Vec<String>>,
}

/// Reads the manifest files below `scope` (a path inside the repository, empty for the root) of
/// the tree `root`. File paths are shown relative to the repository root, as a pull request
/// shows them.
pub fn read_tree(
    objects: &dyn Objects,
    root: ObjectId,
    scope: &[String],
    opts: &LoadOptions,
) -> Result<Vec<SourceFile>, Vec<Diagnostic>> {
    let mut walker = Walker {
        objects,
        root,
        scope,
        trees: HashMap::new(),
        errors: Vec::new(),
        hops_left: MAX_SYMLINK_HOPS,
        scope_real: Vec::new(),
    };
    let scope_tree = match walker.resolve(scope) {
        Ok((real, Resolved::Tree(id))) => {
            walker.scope_real = real;
            id
        }
        Ok((_, Resolved::Blob(_))) => {
            return Err(vec![Diagnostic::error(
                file_pos(&scope.join("/")),
                "--path names a file, not a folder, in this commit",
            )])
        }
        Ok((_, Resolved::Other)) | Err(Refusal::Dangling) => {
            return Err(vec![Diagnostic::error(
                file_pos(&scope.join("/")),
                "--path does not exist in this commit",
            )])
        }
        Err(refusal) => {
            return Err(vec![Diagnostic::error(
                file_pos(&scope.join("/")),
                format!("--path cannot be read: {}", refusal.message()),
            )])
        }
    };
    let found = walker.walk(scope_tree, opts);
    let mut errors = walker.errors;

    let mut files = Vec::new();
    let mut total: usize = 0;
    for (i, file) in found.into_iter().enumerate() {
        if i >= opts.max_files {
            errors.push(Diagnostic::error(
                file_pos(&file.path),
                format!(
                    "the revision holds more than {} manifest files; this one and those after it are not read",
                    opts.max_files
                ),
            ));
            break;
        }
        let len = usize::try_from(file.size).unwrap_or(usize::MAX);
        if len > opts.max_file_bytes {
            errors.push(Diagnostic::error(
                file_pos(&file.path),
                format!(
                    "file is {len} bytes, above the limit of {} bytes per file",
                    opts.max_file_bytes
                ),
            ));
            continue;
        }
        total = total.saturating_add(len);
        if total > opts.max_total_bytes {
            errors.push(Diagnostic::error(
                file_pos(&file.path),
                format!(
                    "the manifest files add up to more than {} bytes at this file; the revision is refused",
                    opts.max_total_bytes
                ),
            ));
            break;
        }
        match objects.blob(file.id) {
            Ok(bytes) => files.push(SourceFile {
                path: file.path,
                bytes: bytes.into(),
            }),
            Err(message) => errors.push(Diagnostic::error(file_pos(&file.path), message)),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        errors.sort();
        Err(errors)
    }
}

fn file_pos(file: &str) -> Pos {
    Pos {
        file: Arc::from(if file.is_empty() { "." } else { file }),
        line: 1,
        column: 1,
    }
}

enum Resolved {
    Tree(ObjectId),
    Blob(ObjectId),
    /// A submodule.
    Other,
}

/// Why a path does not resolve.
enum Refusal {
    Absolute(String),
    LeavesRepository(String),
    Dangling,
    Loop,
    Unreadable(String),
}

impl Refusal {
    fn message(&self) -> String {
        match self {
            Refusal::Absolute(target) => format!(
                "symlink to the absolute path {target:?} is refused: only relative symlinks that stay inside the folder are followed"
            ),
            Refusal::LeavesRepository(target) => {
                format!("symlink to {target:?} is refused: it leaves the repository")
            }
            Refusal::Dangling => "the path does not exist in this commit".to_string(),
            Refusal::Loop => format!(
                "symlinks loop (more than {MAX_SYMLINK_HOPS} of them on the way to the target)"
            ),
            Refusal::Unreadable(message) => message.clone(),
        }
    }
}

struct Walker<'a> {
    objects: &'a dyn Objects,
    root: ObjectId,
    scope: &'a [String],
    trees: HashMap<ObjectId, Arc<Vec<Entry>>>,
    errors: Vec<Diagnostic>,
    /// Symlinks the current lookup may still follow.
    hops_left: usize,
    /// Where `scope` really is, when it is (or goes through) a symlink.
    scope_real: Vec<String>,
}

impl Walker<'_> {
    fn tree(&mut self, id: ObjectId) -> Result<Arc<Vec<Entry>>, String> {
        if let Some(tree) = self.trees.get(&id) {
            return Ok(tree.clone());
        }
        let tree = Arc::new(self.objects.tree(id)?);
        self.trees.insert(id, tree.clone());
        Ok(tree)
    }

    /// Resolves a path from the repository root, following symlinks on the way (and at the
    /// end): where it really is (no symlink left on it), and what is there.
    fn resolve(&mut self, path: &[String]) -> Result<(Vec<String>, Resolved), Refusal> {
        let mut current = Resolved::Tree(self.root);
        let mut real: Vec<String> = Vec::new();
        for name in path {
            let Resolved::Tree(tree) = current else {
                return Err(Refusal::Dangling);
            };
            let entries = self.tree(tree).map_err(Refusal::Unreadable)?;
            let Some(entry) = entries.iter().find(|e| e.name == name.as_bytes()) else {
                return Err(Refusal::Dangling);
            };
            current = match entry.kind {
                EntryKind::Tree => Resolved::Tree(entry.id),
                EntryKind::Blob | EntryKind::BlobExecutable => Resolved::Blob(entry.id),
                EntryKind::Commit => Resolved::Other,
                EntryKind::Link => {
                    let target = self.link_target(entry.id)?;
                    let (followed, resolved) = self.follow(&real, &target)?;
                    real = followed;
                    current = resolved;
                    continue;
                }
            };
            real.push(name.clone());
        }
        Ok((real, current))
    }

    fn link_target(&mut self, id: ObjectId) -> Result<String, Refusal> {
        let bytes = self.objects.blob(id).map_err(Refusal::Unreadable)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Follows the symlink `target`, found in the folder `parent` (a real path from the
    /// repository root): where it really leads, and what is there. Every symlink followed
    /// counts against one budget per lookup, as in the kernel, so no chain of links costs more
    /// than [`MAX_SYMLINK_HOPS`] steps.
    fn follow(
        &mut self,
        parent: &[String],
        target: &str,
    ) -> Result<(Vec<String>, Resolved), Refusal> {
        if self.hops_left == 0 {
            return Err(Refusal::Loop);
        }
        self.hops_left -= 1;
        if target.starts_with('/') {
            return Err(Refusal::Absolute(target.to_string()));
        }
        let mut path: Vec<String> = parent.to_vec();
        for part in target.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if path.pop().is_none() {
                        return Err(Refusal::LeavesRepository(target.to_string()));
                    }
                }
                name => path.push(name.to_string()),
            }
        }
        self.resolve(&path)
    }

    /// Finds the manifest files below the scope's tree, sorted by path.
    fn walk(&mut self, scope_tree: ObjectId, opts: &LoadOptions) -> Vec<Found> {
        let mut found = Vec::new();
        let mut stack = vec![Dir {
            tree: scope_tree,
            shown: self.scope.to_vec(),
            chain: vec![self.scope_real.clone()],
        }];
        let mut folders = 0usize;
        while let Some(dir) = stack.pop() {
            folders += 1;
            // Symlinked folders can multiply the tree; bound the walk like the file count.
            if folders > opts.max_files {
                self.errors.push(Diagnostic::error(
                    file_pos(&dir.shown.join("/")),
                    format!(
                        "the revision holds more than {} folders; the rest is not read",
                        opts.max_files
                    ),
                ));
                break;
            }
            let entries = match self.tree(dir.tree) {
                Ok(entries) => entries,
                Err(message) => {
                    self.errors
                        .push(Diagnostic::error(file_pos(&dir.shown.join("/")), message));
                    continue;
                }
            };
            let mut sorted: Vec<&Entry> = entries.iter().collect();
            sorted.sort_by(|a, b| a.name.cmp(&b.name));
            let mut subdirs = Vec::new();
            for entry in sorted {
                if entry.name.starts_with(b".") {
                    continue;
                }
                let lossy = String::from_utf8_lossy(&entry.name).into_owned();
                let mut shown = dir.shown.clone();
                shown.push(lossy.clone());
                let rel = shown.join("/");
                let Ok(name) = std::str::from_utf8(&entry.name) else {
                    if manifest::is_manifest_name(&lossy) {
                        self.errors.push(Diagnostic::error(
                            file_pos(&rel),
                            "the file name is not valid UTF-8",
                        ));
                    }
                    continue;
                };
                let resolved_here = {
                    let mut here = dir.chain.last().cloned().unwrap_or_default();
                    here.push(name.to_string());
                    here
                };
                match entry.kind {
                    EntryKind::Tree => {
                        let mut chain = dir.chain.clone();
                        chain.push(resolved_here);
                        subdirs.push(Dir {
                            tree: entry.id,
                            shown,
                            chain,
                        });
                    }
                    EntryKind::Blob | EntryKind::BlobExecutable => {
                        if manifest::is_manifest_name(name) {
                            match self.objects.blob_size(entry.id) {
                                Ok(size) => found.push(Found {
                                    path: rel,
                                    id: entry.id,
                                    size,
                                }),
                                Err(message) => {
                                    self.errors.push(Diagnostic::error(file_pos(&rel), message))
                                }
                            }
                        }
                    }
                    EntryKind::Commit => {
                        warn!(path = %rel, commit = %entry.id, "submodule skipped: its manifests are not read");
                    }
                    EntryKind::Link => {
                        let parent = dir.chain.last().cloned().unwrap_or_default();
                        if let Some((tree, real)) =
                            self.follow_entry(entry, name, &rel, &parent, &dir.chain, &mut found)
                        {
                            let mut chain = dir.chain.clone();
                            chain.push(real);
                            subdirs.push(Dir { tree, shown, chain });
                        }
                    }
                }
            }
            // Depth-first in name order.
            stack.extend(subdirs.into_iter().rev());
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        found
    }

    /// A symlink in the walk: a manifest file it leads to goes into `found`; a folder is
    /// returned with its real path, to be walked. A symlink named like a
    /// manifest must resolve; other symlinks matter only when they lead to a folder, like in
    /// [`manifest::read_dir`].
    fn follow_entry(
        &mut self,
        entry: &Entry,
        name: &str,
        rel: &str,
        parent: &[String],
        chain: &[Vec<String>],
        found: &mut Vec<Found>,
    ) -> Option<(ObjectId, Vec<String>)> {
        let wanted = manifest::is_manifest_name(name);
        let target = match self.link_target(entry.id) {
            Ok(target) => target,
            Err(refusal) => {
                self.errors
                    .push(Diagnostic::error(file_pos(rel), refusal.message()));
                return None;
            }
        };
        self.hops_left = MAX_SYMLINK_HOPS;
        let (canonical, resolved) = match self.follow(parent, &target) {
            Ok(followed) => followed,
            Err(refusal) => {
                if wanted {
                    let message = match refusal {
                        Refusal::Dangling => format!(
                            "symlink to {target:?} cannot be followed: its target does not exist in this commit"
                        ),
                        Refusal::Loop => format!("symlink to {target:?} cannot be followed: {}", refusal.message()),
                        other => other.message(),
                    };
                    self.errors.push(Diagnostic::error(file_pos(rel), message));
                }
                return None;
            }
        };
        let is_tree = matches!(resolved, Resolved::Tree(_));
        if !wanted && !is_tree {
            return None;
        }
        if !canonical.starts_with(&self.scope_real) {
            self.errors.push(Diagnostic::error(
                file_pos(rel),
                format!("symlink to {target:?} is refused: it leaves the manifest folder"),
            ));
            return None;
        }
        match resolved {
            Resolved::Tree(tree) => {
                if chain.contains(&canonical) {
                    self.errors.push(Diagnostic::error(
                        file_pos(rel),
                        format!(
                            "symlink to {target:?} is refused: it loops back to a folder that contains it"
                        ),
                    ));
                    return None;
                }
                Some((tree, canonical))
            }
            Resolved::Blob(id) => {
                match self.objects.blob_size(id) {
                    Ok(size) => found.push(Found {
                        path: rel.to_string(),
                        id,
                        size,
                    }),
                    Err(message) => self.errors.push(Diagnostic::error(file_pos(rel), message)),
                }
                None
            }
            Resolved::Other => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trees and blobs in memory, with made-up ids.
    #[derive(Default)]
    struct Fake {
        trees: HashMap<ObjectId, Vec<Entry>>,
        blobs: HashMap<ObjectId, Vec<u8>>,
        next: u64,
        blob_reads: std::cell::Cell<usize>,
    }

    enum Node {
        File(&'static str),
        Link(&'static str),
        Dir(Vec<(&'static str, Node)>),
        Submodule,
    }

    impl Fake {
        fn id(&mut self) -> ObjectId {
            self.next += 1;
            ObjectId::from_hex(format!("{:040x}", self.next).as_bytes()).expect("40 hex digits")
        }

        fn add(&mut self, node: &Node) -> (EntryKind, ObjectId) {
            let id = self.id();
            match node {
                Node::File(text) => {
                    self.blobs.insert(id, text.as_bytes().to_vec());
                    (EntryKind::Blob, id)
                }
                Node::Link(target) => {
                    self.blobs.insert(id, target.as_bytes().to_vec());
                    (EntryKind::Link, id)
                }
                Node::Submodule => (EntryKind::Commit, id),
                Node::Dir(children) => {
                    let entries = children
                        .iter()
                        .map(|(name, child)| {
                            let (kind, id) = self.add(child);
                            Entry {
                                name: name.as_bytes().to_vec(),
                                kind,
                                id,
                            }
                        })
                        .collect();
                    self.trees.insert(id, entries);
                    (EntryKind::Tree, id)
                }
            }
        }
    }

    impl Objects for Fake {
        fn tree(&self, id: ObjectId) -> Result<Vec<Entry>, String> {
            self.trees
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("no tree {id}"))
        }
        fn blob_size(&self, id: ObjectId) -> Result<u64, String> {
            self.blobs
                .get(&id)
                .map(|b| b.len() as u64)
                .ok_or_else(|| format!("no blob {id}"))
        }
        fn blob(&self, id: ObjectId) -> Result<Vec<u8>, String> {
            self.blob_reads.set(self.blob_reads.get() + 1);
            self.blobs
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("no blob {id}"))
        }
    }

    fn read(
        root: Node,
        scope: &str,
        opts: &LoadOptions,
    ) -> (Result<Vec<String>, Vec<String>>, usize) {
        let mut fake = Fake::default();
        let (_, id) = fake.add(&root);
        let scope: Vec<String> = scope
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let result = read_tree(&fake, id, &scope, opts)
            .map(|files| files.into_iter().map(|f| f.path).collect())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect());
        (result, fake.blob_reads.get())
    }

    fn files(root: Node, scope: &str) -> Vec<String> {
        read(root, scope, &LoadOptions::default())
            .0
            .unwrap_or_else(|e| panic!("expected files, got errors {e:#?}"))
    }

    fn errors(root: Node, scope: &str) -> Vec<String> {
        match read(root, scope, &LoadOptions::default()).0 {
            Ok(files) => panic!("expected errors, got files {files:?}"),
            Err(errors) => errors,
        }
    }

    use Node::{Dir as D, File as F, Link as L};

    #[test]
    fn reads_manifests_below_the_path_only_with_the_same_name_rules_as_folders() {
        let root = D(vec![
            ("README.md", F("hi")),
            ("other.yaml", F("a: 1")),
            (
                "mesh",
                D(vec![
                    ("b.yml", F("b: 1")),
                    ("a.yaml", F("a: 1")),
                    ("a.yaml~", F("x")),
                    (".a.yaml.swp", F("x")),
                    (".hidden", D(vec![("h.yaml", F("x"))])),
                    ("notes.txt", F("x")),
                    ("routes", D(vec![("r.yaml", F("r: 1"))])),
                    ("vendor", Node::Submodule),
                ]),
            ),
        ]);
        assert_eq!(
            files(root, "mesh"),
            ["mesh/a.yaml", "mesh/b.yml", "mesh/routes/r.yaml"]
        );
    }

    #[test]
    fn whole_repository_without_a_path() {
        let root = D(vec![
            ("a.yaml", F("a: 1")),
            ("d", D(vec![("b.yaml", F("b: 1"))])),
        ]);
        assert_eq!(files(root, ""), ["a.yaml", "d/b.yaml"]);
    }

    #[test]
    fn a_missing_path_is_an_error() {
        let root = D(vec![("a.yaml", F("a: 1"))]);
        let errors = errors(root, "mesh");
        assert!(
            errors[0].contains("mesh") && errors[0].contains("--path does not exist"),
            "{errors:?}"
        );
    }

    #[test]
    fn symlinks_inside_the_path_are_followed() {
        let root = D(vec![(
            "mesh",
            D(vec![
                ("shared", D(vec![("s.yaml", F("s: 1"))])),
                ("link.yaml", L("shared/s.yaml")),
                ("alias", L("./shared")),
                ("up", D(vec![("back.yaml", L("../shared/s.yaml"))])),
                ("ignored-link", L("../README")),
            ]),
        )]);
        assert_eq!(
            files(root, "mesh"),
            [
                "mesh/alias/s.yaml",
                "mesh/link.yaml",
                "mesh/shared/s.yaml",
                "mesh/up/back.yaml"
            ]
        );
    }

    #[test]
    fn the_path_itself_may_be_a_symlink_inside_the_repository() {
        let root = D(vec![
            ("real", D(vec![("a.yaml", F("a: 1"))])),
            ("mesh", L("real")),
        ]);
        assert_eq!(files(root, "mesh"), ["mesh/a.yaml"]);
    }

    #[test]
    fn symlinks_that_leave_are_absolute_dangle_or_loop_are_refused() {
        let cases = [
            (L("/etc/passwd"), "absolute path"),
            (L("../../outside.yaml"), "leaves the repository"),
            (L("../secret.yaml"), "leaves the manifest folder"),
            (L("missing.yaml"), "does not exist"),
            (L("loop.yaml"), "loop"),
        ];
        for (link, expected) in cases {
            let root = D(vec![
                ("secret.yaml", F("s: 1")),
                (
                    "mesh",
                    D(vec![("loop.yaml", L("loop.yaml")), ("x.yaml", link)]),
                ),
            ]);
            let errors = errors(root, "mesh");
            assert!(
                errors
                    .iter()
                    .any(|e| e.contains("mesh/x.yaml") && e.contains(expected)),
                "expected {expected:?} for mesh/x.yaml in {errors:#?}"
            );
        }
    }

    #[test]
    fn a_folder_symlink_to_an_ancestor_is_a_loop() {
        let root = D(vec![(
            "mesh",
            D(vec![
                ("a.yaml", F("a: 1")),
                ("d", D(vec![("back", L(".."))])),
            ]),
        )]);
        let errors = errors(root, "mesh");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("mesh/d/back") && e.contains("loops back")),
            "{errors:#?}"
        );
    }

    #[test]
    fn mutual_symlinks_are_a_loop() {
        let root = D(vec![(
            "mesh",
            D(vec![("a.yaml", L("b.yaml")), ("b.yaml", L("a.yaml"))]),
        )]);
        let errors = errors(root, "mesh");
        assert!(errors.iter().all(|e| e.contains("loop")), "{errors:#?}");
        assert_eq!(errors.len(), 2, "{errors:#?}");
    }

    #[test]
    fn limits_are_checked_before_blobs_are_read() {
        let big = D(vec![
            ("big.yaml", F("0123456789")),
            ("small.yaml", F("a: 1")),
        ]);
        let opts = LoadOptions {
            max_file_bytes: 5,
            ..LoadOptions::default()
        };
        let (result, reads) = read(big, "", &opts);
        let errors = result.expect_err("too big");
        assert!(
            errors[0].contains("big.yaml") && errors[0].contains("above the limit"),
            "{errors:?}"
        );
        assert_eq!(reads, 1, "only small.yaml may be read");

        let many = D(vec![
            ("a.yaml", F("a")),
            ("b.yaml", F("b")),
            ("c.yaml", F("c")),
        ]);
        let opts = LoadOptions {
            max_files: 2,
            ..LoadOptions::default()
        };
        let errors = read(many, "", &opts).0.expect_err("too many");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("c.yaml") && e.contains("more than 2")),
            "{errors:?}"
        );

        let total = D(vec![("a.yaml", F("aaaa")), ("b.yaml", F("bbbb"))]);
        let opts = LoadOptions {
            max_total_bytes: 6,
            ..LoadOptions::default()
        };
        let (result, reads) = read(total, "", &opts);
        let errors = result.expect_err("too much in total");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("b.yaml") && e.contains("add up")),
            "{errors:?}"
        );
        assert_eq!(reads, 1, "b.yaml must not be read");
    }
}
