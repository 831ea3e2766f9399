//! Cheap structural checks on an upload, before anything compiles it.
//!
//! Cranelift's time and memory grow faster than linearly on some shapes of
//! code (a million tiny functions, one function of deeply nested blocks), so
//! a module whose shape alone promises a pathological compile is refused
//! here, in one linear pass over its bytes that allocates nothing per
//! operator, with a `compile_limit` error naming the bound. What passes
//! still compiles under the CPU, memory and wall-clock bounds of
//! `compiler.rs`: these checks only make the common attacks cheap to refuse.
//!
//! This module never validates types or compiles; a module it passes may
//! still be refused by wasmtime.

use wasmparser::{Operator, Parser, Payload};

use super::LoadError;

/// Most functions with a body in a component, over all its core modules.
/// A Python (componentize-py) or JavaScript (componentize-js) component
/// carries a few tens of thousands; a million tiny functions took 34 s and
/// 5.7 GiB to compile.
pub const MAX_FUNCTIONS: u64 = 200_000;

/// Most bytes in one function body. Cranelift compiles a function as one
/// unit, and some passes are superlinear in its size.
pub const MAX_FUNCTION_BODY_BYTES: usize = 1 << 20;

/// Deepest nesting of blocks, loops, ifs and trys in one function. Compilers
/// lower a `switch` to one block per case, so interpreters reach the
/// hundreds; a function nested a million deep ran for minutes.
pub const MAX_NESTING_DEPTH: u32 = 10_000;

/// Most locals in one function (wasmparser's own validation limit, checked
/// here before anything else reads the body).
pub const MAX_LOCALS: u64 = 50_000;

/// Refuses `bytes` when their shape is beyond the bounds above; parse errors
/// are `invalid_component`, as compiling would have said.
pub(crate) fn check_shape(bytes: &[u8]) -> Result<(), LoadError> {
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(e.to_string());
    let mut functions = 0u64;
    // `parse_all` descends into nested modules and components.
    for payload in Parser::new(0).parse_all(bytes) {
        let Payload::CodeSectionEntry(body) = payload.map_err(invalid)? else {
            continue;
        };
        functions += 1;
        if functions > MAX_FUNCTIONS {
            return Err(limit(format!(
                "more than {MAX_FUNCTIONS} functions with a body"
            )));
        }
        let offset = body.range().start;
        let size = (body.range().end - offset) as usize;
        if size > MAX_FUNCTION_BODY_BYTES {
            return Err(limit(format!(
                "a function body of {size} bytes at offset {offset} (at most {MAX_FUNCTION_BODY_BYTES})"
            )));
        }
        let mut locals = 0u64;
        for group in body.get_locals_reader().map_err(invalid)? {
            let (count, _) = group.map_err(invalid)?;
            locals += u64::from(count);
            if locals > MAX_LOCALS {
                return Err(limit(format!(
                    "a function with more than {MAX_LOCALS} locals at offset {offset}"
                )));
            }
        }
        let mut depth = 0u32;
        let mut operators = body.get_operators_reader().map_err(invalid)?;
        while !operators.eof() {
            match operators.read().map_err(invalid)? {
                Operator::Block { .. }
                | Operator::Loop { .. }
                | Operator::If { .. }
                | Operator::Try { .. }
                | Operator::TryTable { .. } => {
                    depth += 1;
                    if depth > MAX_NESTING_DEPTH {
                        return Err(limit(format!(
                            "blocks nested more than {MAX_NESTING_DEPTH} deep in the function at offset {offset}"
                        )));
                    }
                }
                Operator::End => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
}

fn limit(what: String) -> LoadError {
    LoadError::CompileLimit(format!("{what}; refused before compiling"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component embedding one core module of `fields`.
    fn component(fields: &str) -> Vec<u8> {
        wat::parse_str(format!("(component (core module {fields}))")).expect("test component")
    }

    #[test]
    fn ordinary_code_passes() {
        let bytes = component("(func (param i32) (result i32) local.get 0 (block (loop (br 1))))");
        check_shape(&bytes).expect("ordinary code");
    }

    #[test]
    fn deep_nesting_is_refused_before_compiling() {
        let depth = MAX_NESTING_DEPTH as usize + 1;
        let body = format!("(func {} {})", "(block".repeat(depth), ")".repeat(depth));
        let err = check_shape(&component(&body)).expect_err("too deep");
        assert_eq!(err.kind(), "compile_limit", "{err}");
        let ok = MAX_NESTING_DEPTH as usize;
        let body = format!("(func {} {})", "(block".repeat(ok), ")".repeat(ok));
        check_shape(&component(&body)).expect("at the bound");
    }

    #[test]
    fn too_many_locals_are_refused() {
        let body = format!("(func (local {}))", "i32 ".repeat(MAX_LOCALS as usize + 1));
        let err = check_shape(&component(&body)).expect_err("too many locals");
        assert_eq!(err.kind(), "compile_limit", "{err}");
    }
}
