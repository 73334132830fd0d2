//! The errors and warnings one compilation collects. The compiler reports every problem it
//! finds rather than stopping at the first, so one `sluice validate` run lists them all.

use crate::manifest::{Diagnostic, Pos};

#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Findings {
    pub fn error(&mut self, pos: &Pos, message: impl Into<String>) {
        self.errors.push(Diagnostic::error(pos.clone(), message));
    }

    pub fn warning(&mut self, pos: &Pos, message: impl Into<String>) {
        self.warnings
            .push(Diagnostic::warning(pos.clone(), message));
    }
}
