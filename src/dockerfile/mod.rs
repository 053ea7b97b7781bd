//! Dockerfile frontend: parser (directives, continuations, heredocs) and word expansion.
//!
//! [`parse`] turns the bytes of a Dockerfile into an [`ast::Dockerfile`] whose words are raw;
//! [`expand`] applies BuildKit's shell-lexer rules to those words once the build state is known.

pub mod ast;
pub mod expand;
mod parser;

pub use parser::{parse, ParseError, MAX_FILE, MAX_LINE};
