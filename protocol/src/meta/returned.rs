//! Which return flags a meta reply carries: one per request flag that asks
//! for something (`k O c f s t h l`), in request order, then the
//! win/stale markers (`Z X W`, in that order, as memcached 1.6.18 writes them), built from what the
//! answering side knows — the request itself ([`Echo`]) and the item or
//! write it answers about ([`ItemFields`]). A node answering from its own
//! items and a proxy answering from a peer's binary reply fill
//! [`ItemFields`] differently and share the rest. On the stack: no
//! allocation per reply.

use super::flags::{Flag, MetaFlags, MAX_FLAGS};
use super::reply::ReturnFlag;

/// What a reply echoes back from its request.
#[derive(Clone, Copy, Debug)]
pub struct Echo<'a> {
    /// The request's bytes (the opaque is a span into them).
    pub frame: &'a [u8],
    /// The key as stored (decoded, for a base64 request).
    pub key: &'a [u8],
    /// The request carried `b`: the key goes back base64-encoded.
    pub base64: bool,
}

/// What the answered item or write offers; `None` where there is nothing
/// to return (a miss), so the flag is left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ItemFields {
    /// The item's CAS, or a write's new one (`c`).
    pub cas: Option<u64>,
    /// The client flags (`f`).
    pub client_flags: Option<u32>,
    /// The value's length (`s`).
    pub size: Option<u64>,
    /// Seconds left, `-1` for no expiry (`t`).
    pub ttl: Option<i64>,
    /// Fetched before this request (`h`).
    pub hit_before: Option<bool>,
    /// Seconds since the last fetch or write (`l`).
    pub last_access: Option<u64>,
}

/// The recache markers of an `mg` hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Markers {
    /// `Z`: another client already holds the win token.
    pub already_won: bool,
    /// `X`: the item is stale.
    pub stale: bool,
    /// `W`: this client won.
    pub won: bool,
}

/// Up to one return flag per request flag, in request order.
#[derive(Clone, Copy, Debug)]
pub struct ReturnFlags<'a> {
    flags: [ReturnFlag<'a>; MAX_FLAGS],
    len: usize,
}

impl<'a> ReturnFlags<'a> {
    /// The return flags `flags` asks for: echoes (`k`, `O`) always, item
    /// fields where `item` has them.
    pub fn collect(flags: &MetaFlags, echo: &Echo<'a>, item: ItemFields) -> ReturnFlags<'a> {
        let mut out = ReturnFlags {
            flags: [ReturnFlag::Won; MAX_FLAGS],
            len: 0,
        };
        for flag in flags.iter() {
            let ret = match flag {
                Flag::ReturnKey if echo.base64 => Some(ReturnFlag::KeyBase64(echo.key)),
                Flag::ReturnKey => Some(ReturnFlag::Key(echo.key)),
                Flag::Opaque => flags.opaque().map(|o| ReturnFlag::Opaque(o.of(echo.frame))),
                Flag::ReturnCas => item.cas.map(ReturnFlag::Cas),
                Flag::ReturnFlags => item.client_flags.map(ReturnFlag::ClientFlags),
                Flag::ReturnSize => item.size.map(ReturnFlag::Size),
                Flag::ReturnTtl => item.ttl.map(ReturnFlag::Ttl),
                Flag::ReturnHit => item.hit_before.map(ReturnFlag::Hit),
                Flag::ReturnLastAccess => item.last_access.map(ReturnFlag::LastAccess),
                _ => None,
            };
            if let (Some(ret), Some(slot)) = (ret, out.flags.get_mut(out.len)) {
                *slot = ret;
                out.len += 1;
            }
        }
        out
    }

    /// Appends the markers set in `markers`, after the return flags.
    pub fn mark(&mut self, markers: Markers) {
        let all = [
            (markers.already_won, ReturnFlag::AlreadyWon),
            (markers.stale, ReturnFlag::Stale),
            (markers.won, ReturnFlag::Won),
        ];
        for (set, flag) in all {
            if let (true, Some(slot)) = (set, self.flags.get_mut(self.len)) {
                *slot = flag;
                self.len += 1;
            }
        }
    }

    /// Drops the collected flags `wanted` refuses, keeping the order.
    pub fn keep(&mut self, wanted: impl Fn(&ReturnFlag<'a>) -> bool) {
        let mut len = 0;
        for i in 0..self.len {
            if wanted(&self.flags[i]) {
                self.flags[len] = self.flags[i];
                len += 1;
            }
        }
        self.len = len;
    }

    /// The flags, in request order.
    pub fn as_slice(&self) -> &[ReturnFlag<'a>] {
        &self.flags[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{parse_meta, MetaCommand};
    use crate::Limits;

    /// The flags of `mg <key> <flags>` and the frame they point into.
    fn with_flags(line: &[u8], f: impl FnOnce(&MetaFlags, &[u8])) {
        let Ok(Some((MetaCommand::Get(get), _))) = parse_meta(line, &Limits::default()) else {
            panic!("{:?} does not parse", String::from_utf8_lossy(line));
        };
        f(&get.flags, line);
    }

    #[test]
    fn request_order_echoes_always_item_fields_when_known() {
        with_flags(b"mg foo t s Oab k c f v\r\n", |flags, frame| {
            let echo = Echo {
                frame,
                key: b"foo",
                base64: false,
            };
            let hit = ItemFields {
                cas: Some(7),
                client_flags: Some(3),
                size: Some(5),
                ttl: Some(-1),
                ..ItemFields::default()
            };
            assert_eq!(
                ReturnFlags::collect(flags, &echo, hit).as_slice(),
                &[
                    ReturnFlag::Ttl(-1),
                    ReturnFlag::Size(5),
                    ReturnFlag::Opaque(b"ab"),
                    ReturnFlag::Key(b"foo"),
                    ReturnFlag::Cas(7),
                    ReturnFlag::ClientFlags(3),
                ]
            );
            let miss = ReturnFlags::collect(flags, &echo, ItemFields::default());
            assert_eq!(
                miss.as_slice(),
                &[ReturnFlag::Opaque(b"ab"), ReturnFlag::Key(b"foo")]
            );
            let b64 = Echo {
                base64: true,
                ..echo
            };
            let mut kept = ReturnFlags::collect(flags, &b64, hit);
            kept.keep(|f| !matches!(f, ReturnFlag::Ttl(_) | ReturnFlag::Size(_)));
            assert_eq!(
                kept.as_slice(),
                &[
                    ReturnFlag::Opaque(b"ab"),
                    ReturnFlag::KeyBase64(b"foo"),
                    ReturnFlag::Cas(7),
                    ReturnFlag::ClientFlags(3),
                ]
            );
        });
    }
}
