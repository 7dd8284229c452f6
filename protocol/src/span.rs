//! [`Span`]: a byte range into the frame a request was parsed from.
//!
//! Parsers return spans instead of borrowed slices so the caller can keep
//! mutating its read buffer: it splits the consumed bytes off, freezes them and
//! turns each span into a cheap `Bytes::slice`.

use bytes::Bytes;

/// A half-open byte range `start..end` into a parsed frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// First byte of the range.
    pub start: usize,
    /// One past the last byte of the range.
    pub end: usize,
}

impl Span {
    /// The empty span at offset 0.
    pub const EMPTY: Span = Span { start: 0, end: 0 };

    /// A span over `start..end`. Callers guarantee `start <= end`.
    pub const fn new(start: usize, end: usize) -> Span {
        Span { start, end }
    }

    /// Number of bytes covered.
    pub const fn len(&self) -> usize {
        self.end - self.start
    }

    /// True when the span covers no bytes.
    pub const fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes this span covers in `frame`. Panics only if the span did not
    /// come from parsing `frame` (a caller bug, not an input fault).
    pub fn of<'a>(&self, frame: &'a [u8]) -> &'a [u8] {
        &frame[self.start..self.end]
    }

    /// The bytes this span covers, as a zero-copy slice of `frame`.
    pub fn slice(&self, frame: &Bytes) -> Bytes {
        frame.slice(self.start..self.end)
    }

    /// This span moved `by` bytes to the right (for a frame embedded at an offset).
    pub const fn shift(self, by: usize) -> Span {
        Span {
            start: self.start + by,
            end: self.end + by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_and_slice_agree() {
        let frame = Bytes::from_static(b"get foo\r\n");
        let key = Span::new(4, 7);
        assert_eq!(key.of(&frame), b"foo");
        assert_eq!(key.slice(&frame), Bytes::from_static(b"foo"));
        assert_eq!(key.len(), 3);
        assert!(!key.is_empty());
        assert_eq!(key.shift(2), Span::new(6, 9));
    }
}
