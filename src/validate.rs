//! `sluice validate`: loads and compiles a manifest folder exactly as `serve` would and prints
//! every finding, for people (`FILE:LINE:COL: error: MESSAGE`) or CI bots (`--format json`).

use std::process::ExitCode;

use crate::cli::{OutputFormat, ValidateArgs};
use crate::compile;
use crate::manifest::{self, Diagnostic, LoadOptions, Severity};
use crate::publisher::Finding;
use crate::registry::Workloads;

/// Every finding for the folder: errors refuse it, warnings do not.
pub fn check(path: &std::path::Path, options: &LoadOptions) -> Vec<Diagnostic> {
    let files = match manifest::read_dir(path, options) {
        Ok(files) => files,
        Err(errors) => return errors,
    };
    let revision = match manifest::load_files(&files, options) {
        Ok(revision) => revision,
        Err(errors) => return errors,
    };
    let revision_id = crate::source::dir::revision_id(&files);
    let mut findings = revision.warnings.clone();
    if let Err(errors) = compile::compile_mesh(&revision_id, &revision, &Workloads::default()) {
        findings.extend(errors);
    }
    findings.sort();
    findings
}

pub fn run(args: &ValidateArgs) -> ExitCode {
    let options = LoadOptions {
        allow_empty: args.allow_empty,
        ..LoadOptions::default()
    };
    let findings = check(&args.path, &options);
    let valid = !findings.iter().any(|f| f.severity == Severity::Error);
    match args.format {
        OutputFormat::Text => {
            for finding in &findings {
                println!("{finding}");
            }
        }
        OutputFormat::Json => {
            let findings: Vec<Finding> = findings.iter().map(Finding::from).collect();
            let out = serde_json::json!({ "valid": valid, "findings": findings });
            println!("{out}");
        }
    }
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
