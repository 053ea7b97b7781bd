//! Dockerfile frontend: parser (directives, continuations, heredocs) and word expansion.

pub mod ast;
