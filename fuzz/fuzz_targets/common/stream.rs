//! The pipelined-stream driver shared by the text-codec fuzz targets: parse
//! the input as a connection would — request after request, honouring
//! `Skip` — and check progress and bounded buffering at every step, handing
//! each parsed item to the target's own checks.

use shoal_protocol::{Limits, ParseError, ParseResult, Recovery};

/// The two limit sets every text target runs under: roomy, and tight enough
/// that the limit paths are hit often.
pub fn limit_sets() -> [Limits; 2] {
    [
        Limits {
            max_value_len: 4096,
            ..Limits::default()
        },
        Limits {
            max_line_len: 64,
            max_value_len: 16,
            ..Limits::default()
        },
    ]
}

/// `limits` with the line limit relaxed for re-parsing a canonical encoding,
/// which may be longer than the original (a bare LF becomes CRLF).
pub fn relaxed(limits: &Limits) -> Limits {
    Limits {
        max_line_len: limits.max_line_len.saturating_mul(2),
        ..*limits
    }
}

/// Parses `data` with `parse` until it needs more bytes or must close.
/// `check` sees every parsed item with exactly the bytes it consumed;
/// `may_skip_past_buffer` says which errors may skip more than is buffered
/// (a swallowed data block).
pub fn drive<T>(
    data: &[u8],
    limits: &Limits,
    parse: fn(&[u8], &Limits) -> ParseResult<T>,
    mut check: impl FnMut(&T, &[u8], &Limits),
    may_skip_past_buffer: impl Fn(&ParseError) -> bool,
) {
    let mut at = 0;
    let mut parses = 0;
    while at <= data.len() {
        parses += 1;
        assert!(parses <= data.len() + 1, "more parses than input bytes");
        let rest = &data[at..];
        match parse(rest, limits) {
            Ok(Some((item, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "consumed {used} of {}",
                    rest.len()
                );
                check(&item, &rest[..used], limits);
                at += used;
            }
            Ok(None) => {
                let bound = limits.max_line_len + limits.max_value_len + 2;
                assert!(
                    rest.len() < bound,
                    "still waiting with {} bytes",
                    rest.len()
                );
                return;
            }
            Err(e) => match e.recovery {
                Recovery::Close => return,
                Recovery::Skip(n) => {
                    assert!(n > 0, "{e:?} would stall the stream");
                    assert!(
                        n <= rest.len() || may_skip_past_buffer(&e),
                        "{e:?} skips {n} of {}",
                        rest.len()
                    );
                    at = at.saturating_add(n);
                }
            },
        }
    }
}
