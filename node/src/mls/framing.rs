//! Reads the public header of a TLS-serialised RFC 9420 `MLSMessage` (§6, §6.2, §6.3).
//!
//! ```text
//! MLSMessage     = version u16 (mls10 = 1) | wire_format u16 | body
//! PublicMessage  = group_id<V> | epoch u64 | sender | authenticated_data<V> | content_type u8 | ...
//! PrivateMessage = group_id<V> | epoch u64 | content_type u8 | ...
//! sender         = sender_type u8 (1 member, 2 external: + u32 index; 3, 4: nothing)
//! <V>            = RFC 9420 §2.1.2 varint length (1, 2 or 4 bytes, minimal) + that many bytes
//! ```
//!
//! [`peek`] is sans-IO and panic-free: every length is checked against the remaining input
//! before it is used, nothing is allocated in proportion to a claimed length, and only the
//! group id (already proven to be present) is copied out. The header fields must be present;
//! whatever follows them (content, signatures, membership tag, ciphertext) is opaque and is
//! neither read nor required to be well-formed.
//!
//! What this deliberately does not do: decrypt anything, verify signatures or membership tags,
//! check that the sender is a member, or look inside Welcome, GroupInfo or KeyPackage bodies
//! (see [`super::keypackage`] for KeyPackages). A header that parses says nothing about the
//! authenticity of the message; it only tells the Delivery Service where the message claims
//! to belong so that it can order it (DESIGN invariant 1).

use qpq_schemas::GroupId;

use crate::state::CommitFraming;

/// The protocol version `mls10`, the only one defined by RFC 9420.
const MLS10: u16 = 1;

/// `WireFormat` of an `MLSMessage` (RFC 9420 §6, IANA "MLS Wire Formats").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WireFormat {
    /// `mls_public_message` (1): a signed, unencrypted handshake message.
    PublicMessage,
    /// `mls_private_message` (2): an encrypted handshake or application message.
    PrivateMessage,
    /// `mls_welcome` (3): secrets for new members, encrypted to their KeyPackages.
    Welcome,
    /// `mls_group_info` (4): a signed GroupInfo (for external joins).
    GroupInfo,
    /// `mls_key_package` (5): a KeyPackage.
    KeyPackage,
}

impl WireFormat {
    /// The format's code on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::PublicMessage => 1,
            Self::PrivateMessage => 2,
            Self::Welcome => 3,
            Self::GroupInfo => 4,
            Self::KeyPackage => 5,
        }
    }

    /// The format with this code, if RFC 9420 defines one.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(Self::PublicMessage),
            2 => Some(Self::PrivateMessage),
            3 => Some(Self::Welcome),
            4 => Some(Self::GroupInfo),
            5 => Some(Self::KeyPackage),
            _ => None,
        }
    }
}

/// `ContentType` of a framed message (RFC 9420 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ContentType {
    /// `application` (1): application data (always a PrivateMessage in practice).
    Application,
    /// `proposal` (2): a standalone proposal.
    Proposal,
    /// `commit` (3): a Commit, which moves the group from `epoch` to `epoch + 1`.
    Commit,
}

impl ContentType {
    /// The content type's code on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Self::Application => 1,
            Self::Proposal => 2,
            Self::Commit => 3,
        }
    }

    /// The content type with this code, if RFC 9420 defines one (0 is reserved).
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Application),
            2 => Some(Self::Proposal),
            3 => Some(Self::Commit),
            _ => None,
        }
    }
}

/// The public header of an `MLSMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framing {
    /// Which kind of message this is.
    pub wire_format: WireFormat,
    /// For [`WireFormat::PublicMessage`] and [`WireFormat::PrivateMessage`]: the group the
    /// message claims to belong to. `None` for every other wire format.
    pub content: Option<ContentHeader>,
}

/// The group-addressing part of a `PublicMessage` or `PrivateMessage` header. All of it is
/// sent in the clear by design (RFC 9420 §6.3 keeps it readable for the Delivery Service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentHeader {
    /// `group_id` as sent (any length RFC 9420 allows; quicproquo groups use 32 bytes, see
    /// [`Framing::group`]).
    pub group_id: Vec<u8>,
    /// The epoch the message was created in.
    pub epoch: u64,
    /// Application, proposal or commit.
    pub content_type: ContentType,
}

impl Framing {
    /// The Commit framing the Delivery Service orders on: `Some` for a Commit (public or
    /// private), `None` for anything else.
    ///
    /// # Errors
    /// [`FramingError::GroupIdLength`] if a Commit's group id is not exactly
    /// [`GroupId::LEN`] bytes.
    pub fn commit(&self) -> Result<Option<CommitFraming>, FramingError> {
        match &self.content {
            Some(header) if header.content_type == ContentType::Commit => {
                let group = group_id(&header.group_id)?;
                Ok(Some(CommitFraming {
                    group,
                    epoch: header.epoch,
                }))
            }
            _ => Ok(None),
        }
    }

    /// The group id as a quicproquo [`GroupId`] for public and private messages, `None` for
    /// the other wire formats.
    ///
    /// # Errors
    /// [`FramingError::GroupIdLength`] if the group id is not exactly [`GroupId::LEN`] bytes.
    pub fn group(&self) -> Result<Option<GroupId>, FramingError> {
        self.content
            .as_ref()
            .map(|header| group_id(&header.group_id))
            .transpose()
    }
}

fn group_id(bytes: &[u8]) -> Result<GroupId, FramingError> {
    GroupId::from_slice(bytes).map_err(|e| FramingError::GroupIdLength { got: e.got })
}

/// Why a header could not be read. `field` names the RFC 9420 field being read and `offset`
/// its byte offset in the message, so a client can be told precisely what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// The input ended inside a header field.
    #[error("MLS message truncated in `{field}` at offset {offset}")]
    Truncated {
        /// Field being read.
        field: &'static str,
        /// Where it starts (or where its length prefix said the bytes should be).
        offset: usize,
    },
    /// `version` is not mls10.
    #[error("unsupported MLS protocol version {0} (only mls10 = 1)")]
    BadVersion(u16),
    /// `wire_format` is not one RFC 9420 defines.
    #[error("unknown MLS wire format {0}")]
    UnknownWireFormat(u16),
    /// A variable-length vector's length prefix starts with the invalid bits `11`.
    #[error("invalid varint length prefix in `{field}` at offset {offset}")]
    BadVarint {
        /// Field whose length was being read.
        field: &'static str,
        /// Offset of the length prefix.
        offset: usize,
    },
    /// A length was encoded in more bytes than needed (RFC 9420 §2.1.2 requires minimal).
    #[error("non-minimal varint length in `{field}` at offset {offset}")]
    NonMinimalVarint {
        /// Field whose length was being read.
        field: &'static str,
        /// Offset of the length prefix.
        offset: usize,
    },
    /// `sender_type` is reserved (0) or unknown.
    #[error("unknown MLS sender type {0}")]
    UnknownSenderType(u8),
    /// `content_type` is reserved (0) or unknown.
    #[error("unknown MLS content type {0}")]
    UnknownContentType(u8),
    /// The group id is not the 32 bytes quicproquo groups use.
    #[error("group id must be {} bytes, got {got}", GroupId::LEN)]
    GroupIdLength {
        /// Length received.
        got: usize,
    },
}

/// Reads the public header of an `MLSMessage`.
///
/// # Errors
/// A [`FramingError`] when the version is not mls10, the wire format, sender type or content
/// type is unknown, a length prefix is invalid, or the input ends before the header does.
pub fn peek(bytes: &[u8]) -> Result<Framing, FramingError> {
    let mut r = Reader::new(bytes);
    let version = r.u16("version")?;
    if version != MLS10 {
        return Err(FramingError::BadVersion(version));
    }
    let code = r.u16("wire_format")?;
    let wire_format = WireFormat::from_code(code).ok_or(FramingError::UnknownWireFormat(code))?;
    let content = match wire_format {
        WireFormat::PublicMessage => Some(public_header(&mut r)?),
        WireFormat::PrivateMessage => Some(private_header(&mut r)?),
        WireFormat::Welcome | WireFormat::GroupInfo | WireFormat::KeyPackage => None,
    };
    Ok(Framing {
        wire_format,
        content,
    })
}

/// `FramedContent` up to and including `content_type` (RFC 9420 §6).
fn public_header(r: &mut Reader<'_>) -> Result<ContentHeader, FramingError> {
    let group_id = r.vector("group_id")?;
    let epoch = r.u64("epoch")?;
    let sender_type = r.u8("sender_type")?;
    match sender_type {
        // member: leaf_index; external: sender_index.
        1 => {
            r.u32("sender.leaf_index")?;
        }
        2 => {
            r.u32("sender.sender_index")?;
        }
        // new_member_proposal, new_member_commit: no further fields.
        3 | 4 => {}
        other => return Err(FramingError::UnknownSenderType(other)),
    }
    r.vector("authenticated_data")?;
    let content_type = r.content_type()?;
    Ok(ContentHeader {
        group_id: group_id.to_vec(),
        epoch,
        content_type,
    })
}

/// `PrivateMessage` up to and including `content_type` (RFC 9420 §6.3).
fn private_header(r: &mut Reader<'_>) -> Result<ContentHeader, FramingError> {
    let group_id = r.vector("group_id")?;
    let epoch = r.u64("epoch")?;
    let content_type = r.content_type()?;
    Ok(ContentHeader {
        group_id: group_id.to_vec(),
        epoch,
        content_type,
    })
}

/// A cursor over untrusted bytes. Every read is bounds-checked and returns borrowed data.
struct Reader<'a> {
    rest: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            rest: bytes,
            offset: 0,
        }
    }

    fn truncated(&self, field: &'static str) -> FramingError {
        FramingError::Truncated {
            field,
            offset: self.offset,
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FramingError> {
        let (head, tail) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or_else(|| self.truncated(field))?;
        self.rest = tail;
        self.offset += N;
        Ok(*head)
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<&'a [u8], FramingError> {
        if len > self.rest.len() {
            return Err(self.truncated(field));
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        self.offset += len;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FramingError> {
        self.array::<1>(field).map(|[b]| b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FramingError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FramingError> {
        self.array(field).map(u32::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FramingError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn content_type(&mut self) -> Result<ContentType, FramingError> {
        let code = self.u8("content_type")?;
        ContentType::from_code(code).ok_or(FramingError::UnknownContentType(code))
    }

    /// RFC 9420 §2.1.2: the top two bits of the first byte give the length of the length
    /// (00: 1 byte, 01: 2 bytes, 10: 4 bytes, 11: invalid); the remaining bits are the value,
    /// big-endian, and must use the fewest bytes possible.
    fn varint(&mut self, field: &'static str) -> Result<usize, FramingError> {
        let offset = self.offset;
        let first = self.u8(field)?;
        let top = first & 0x3f;
        let (value, min) = match first >> 6 {
            0 => return Ok(usize::from(top)),
            1 => {
                let [b1] = self.array::<1>(field)?;
                (u32::from(u16::from_be_bytes([top, b1])), 1 << 6)
            }
            2 => {
                let [b1, b2, b3] = self.array::<3>(field)?;
                (u32::from_be_bytes([top, b1, b2, b3]), 1 << 14)
            }
            _ => return Err(FramingError::BadVarint { field, offset }),
        };
        if value < min {
            return Err(FramingError::NonMinimalVarint { field, offset });
        }
        // A length that does not fit in usize cannot fit in the input either.
        usize::try_from(value).map_err(|_| self.truncated(field))
    }

    /// `opaque field<V>`: a varint length, then that many bytes (borrowed, not copied).
    fn vector(&mut self, field: &'static str) -> Result<&'a [u8], FramingError> {
        let len = self.varint(field)?;
        self.bytes(len, field)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap (STYLE.md).
mod tests {
    use openmls::prelude::{
        MlsMessageIn, ProtocolMessage, tls_codec::Deserialize as _, tls_codec::Serialize as _,
    };
    use proptest::prelude::*;

    use super::*;
    use crate::mls::devkit::{DevGroup, DevIdentity, HandshakeFraming};

    const GROUP: [u8; 32] = [7; 32];

    // ---- a tiny test-only encoder, written from RFC 9420 (not from the parser) ----

    fn varint(len: usize) -> Vec<u8> {
        match len {
            0..=63 => vec![len as u8],
            64..=16383 => ((len as u16) | 0x4000).to_be_bytes().to_vec(),
            _ => ((len as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        }
    }

    fn vector(bytes: &[u8]) -> Vec<u8> {
        let mut out = varint(bytes.len());
        out.extend_from_slice(bytes);
        out
    }

    fn mls_message(wire_format: u16, body: &[u8]) -> Vec<u8> {
        let mut out = MLS10.to_be_bytes().to_vec();
        out.extend_from_slice(&wire_format.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// `sender` is the encoded Sender struct.
    fn public_body(group: &[u8], epoch: u64, sender: &[u8], aad: &[u8], ct: u8) -> Vec<u8> {
        let mut out = vector(group);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(sender);
        out.extend(vector(aad));
        out.push(ct);
        out
    }

    fn private_body(group: &[u8], epoch: u64, ct: u8) -> Vec<u8> {
        let mut out = vector(group);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.push(ct);
        out
    }

    fn header(group: &[u8], epoch: u64, content_type: ContentType) -> Option<ContentHeader> {
        Some(ContentHeader {
            group_id: group.to_vec(),
            epoch,
            content_type,
        })
    }

    // ---- hand-built headers ----

    #[test]
    fn public_commit_header_from_each_sender_type() {
        for sender in [&[1u8, 0, 0, 0, 9][..], &[2, 0, 0, 0, 1], &[3], &[4]] {
            let msg = mls_message(1, &public_body(&GROUP, 41, sender, b"aad", 3));
            let framing = peek(&msg).unwrap();
            assert_eq!(framing.wire_format, WireFormat::PublicMessage);
            assert_eq!(framing.content, header(&GROUP, 41, ContentType::Commit));
            assert_eq!(
                framing.commit().unwrap(),
                Some(CommitFraming {
                    group: GroupId::new(GROUP),
                    epoch: 41
                })
            );
        }
    }

    #[test]
    fn private_header_is_read_and_trailing_ciphertext_is_ignored() {
        let mut body = private_body(&GROUP, u64::MAX, 1);
        body.extend_from_slice(&[0xff; 100]);
        let framing = peek(&mls_message(2, &body)).unwrap();
        assert_eq!(framing.wire_format, WireFormat::PrivateMessage);
        assert_eq!(
            framing.content,
            header(&GROUP, u64::MAX, ContentType::Application)
        );
        assert_eq!(framing.commit().unwrap(), None);
        assert_eq!(framing.group().unwrap(), Some(GroupId::new(GROUP)));
    }

    #[test]
    fn welcome_group_info_and_key_package_have_no_content_header() {
        for (code, wf) in [
            (3, WireFormat::Welcome),
            (4, WireFormat::GroupInfo),
            (5, WireFormat::KeyPackage),
        ] {
            let framing = peek(&mls_message(code, &[])).unwrap();
            assert_eq!(framing.wire_format, wf);
            assert_eq!(framing.content, None);
            assert_eq!(framing.commit().unwrap(), None);
            assert_eq!(framing.group().unwrap(), None);
        }
    }

    #[test]
    fn version_wire_format_sender_and_content_type_are_checked() {
        let body = private_body(&GROUP, 0, 3);
        let mut v2 = mls_message(2, &body);
        v2[1] = 2;
        assert_eq!(peek(&v2), Err(FramingError::BadVersion(2)));
        for code in [0u16, 6, 0xffff] {
            assert_eq!(
                peek(&mls_message(code, &body)),
                Err(FramingError::UnknownWireFormat(code))
            );
        }
        for st in [0u8, 5, 255] {
            let msg = mls_message(1, &public_body(&GROUP, 0, &[st, 0, 0, 0, 0], b"", 3));
            assert_eq!(peek(&msg), Err(FramingError::UnknownSenderType(st)));
        }
        for ct in [0u8, 4, 255] {
            assert_eq!(
                peek(&mls_message(2, &private_body(&GROUP, 0, ct))),
                Err(FramingError::UnknownContentType(ct))
            );
            let msg = mls_message(1, &public_body(&GROUP, 0, &[3], b"", ct));
            assert_eq!(peek(&msg), Err(FramingError::UnknownContentType(ct)));
        }
    }

    #[test]
    fn commit_with_a_group_id_that_is_not_32_bytes_is_a_typed_error() {
        for len in [0usize, 16, 31, 33, 64] {
            let group = vec![1u8; len];
            let framing = peek(&mls_message(2, &private_body(&group, 5, 3))).unwrap();
            assert_eq!(framing.content, header(&group, 5, ContentType::Commit));
            assert_eq!(
                framing.commit(),
                Err(FramingError::GroupIdLength { got: len })
            );
            assert_eq!(
                framing.group(),
                Err(FramingError::GroupIdLength { got: len })
            );
        }
        // A non-commit with an odd group id still parses; only `commit()`/`group()` refuse.
        let framing = peek(&mls_message(2, &private_body(&[1; 3], 5, 1))).unwrap();
        assert_eq!(framing.commit(), Ok(None));
    }

    #[test]
    fn varint_prefixes_and_minimality() {
        // Longest 1-, 2- and 4-byte encodings parse (exercised through authenticated_data).
        for aad_len in [0usize, 63, 64, 16383, 16384, 70_000] {
            let aad = vec![0xaa; aad_len];
            let msg = mls_message(1, &public_body(&GROUP, 1, &[3], &aad, 2));
            assert_eq!(
                peek(&msg).unwrap().content,
                header(&GROUP, 1, ContentType::Proposal),
                "aad_len {aad_len}"
            );
        }
        // 11 prefix is invalid.
        let msg = mls_message(2, &[0xc0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            peek(&msg),
            Err(FramingError::BadVarint {
                field: "group_id",
                offset: 4
            })
        );
        // Non-minimal: 32 encoded in two bytes, 64 encoded in four bytes.
        for prefix in [&[0x40u8, 32][..], &[0x80, 0, 0, 64]] {
            let mut body = prefix.to_vec();
            body.extend_from_slice(&[0; 64]);
            assert_eq!(
                peek(&mls_message(2, &body)),
                Err(FramingError::NonMinimalVarint {
                    field: "group_id",
                    offset: 4
                })
            );
        }
    }

    #[test]
    fn a_claimed_length_beyond_the_input_is_truncation_not_allocation() {
        // Claims a ~1 GiB group id in a 12-byte message.
        let msg = mls_message(2, &[0xbf, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        assert_eq!(
            peek(&msg),
            Err(FramingError::Truncated {
                field: "group_id",
                offset: 8
            })
        );
    }

    #[test]
    fn varint_agrees_with_tls_codec_on_real_vector_encodings() {
        use openmls::prelude::tls_codec::VLBytes;
        for len in [0usize, 1, 63, 64, 200, 16383, 16384, 100_000] {
            let encoded = VLBytes::new(vec![0x5a; len])
                .tls_serialize_detached()
                .unwrap();
            let mut r = Reader::new(&encoded);
            assert_eq!(r.vector("v").unwrap().len(), len);
            assert!(r.rest.is_empty());
        }
    }

    // ---- real messages from openmls ----

    /// (name, bytes) of every kind of message a two-member group produces, plus what `peek`
    /// must say about each. Messages come from both handshake framings.
    struct Real {
        name: String,
        bytes: Vec<u8>,
        wire_format: WireFormat,
        content: Option<ContentHeader>,
    }

    fn real_messages() -> Vec<Real> {
        let mut out = Vec::new();
        for framing in [HandshakeFraming::Public, HandshakeFraming::Private] {
            let alice = DevIdentity::generate().unwrap();
            let bob = DevIdentity::generate().unwrap();
            let kp = bob.key_package_bytes().unwrap();
            let mut group = DevGroup::create_with(&alice, GroupId::new(GROUP), framing).unwrap();
            let handshake = match framing {
                HandshakeFraming::Public => WireFormat::PublicMessage,
                HandshakeFraming::Private => WireFormat::PrivateMessage,
            };
            let (commit, welcome) = group.add_member(&kp).unwrap();
            group.merge_pending_commit().unwrap();
            let app = group.application_message(b"hello").unwrap();
            let update = group.self_update_commit().unwrap();
            group.merge_pending_commit().unwrap();
            let app2 = group.application_message(b"again").unwrap();
            out.extend([
                Real {
                    name: format!("{framing:?} key package"),
                    bytes: kp,
                    wire_format: WireFormat::KeyPackage,
                    content: None,
                },
                Real {
                    name: format!("{framing:?} add commit"),
                    bytes: commit,
                    wire_format: handshake,
                    content: header(&GROUP, 0, ContentType::Commit),
                },
                Real {
                    name: format!("{framing:?} welcome"),
                    bytes: welcome,
                    wire_format: WireFormat::Welcome,
                    content: None,
                },
                Real {
                    name: format!("{framing:?} application"),
                    bytes: app,
                    wire_format: WireFormat::PrivateMessage,
                    content: header(&GROUP, 1, ContentType::Application),
                },
                Real {
                    name: format!("{framing:?} update commit"),
                    bytes: update,
                    wire_format: handshake,
                    content: header(&GROUP, 1, ContentType::Commit),
                },
                Real {
                    name: format!("{framing:?} application epoch 2"),
                    bytes: app2,
                    wire_format: WireFormat::PrivateMessage,
                    content: header(&GROUP, 2, ContentType::Application),
                },
            ]);
        }
        out
    }

    #[test]
    fn real_openmls_messages_peek_as_expected_and_agree_with_openmls() {
        for real in real_messages() {
            let framing = peek(&real.bytes).unwrap_or_else(|e| panic!("{}: {e}", real.name));
            assert_eq!(framing.wire_format, real.wire_format, "{}", real.name);
            assert_eq!(framing.content, real.content, "{}", real.name);

            // Independent cross-check: openmls's own full decoder agrees.
            let msg = MlsMessageIn::tls_deserialize_exact(&real.bytes).unwrap();
            assert_eq!(framing.wire_format.code(), msg.wire_format() as u16);
            if let Ok(pm) = ProtocolMessage::try_from(msg) {
                let h = framing.content.as_ref().unwrap();
                assert_eq!(h.group_id, pm.group_id().as_slice(), "{}", real.name);
                assert_eq!(h.epoch, pm.epoch().as_u64(), "{}", real.name);
                assert_eq!(
                    h.content_type.code(),
                    pm.content_type() as u8,
                    "{}",
                    real.name
                );
            } else {
                assert!(framing.content.is_none(), "{}", real.name);
            }

            let expected_commit = real
                .content
                .as_ref()
                .filter(|h| h.content_type == ContentType::Commit)
                .map(|h| CommitFraming {
                    group: GroupId::new(GROUP),
                    epoch: h.epoch,
                });
            assert_eq!(framing.commit().unwrap(), expected_commit, "{}", real.name);
        }
    }

    /// Header length computed from RFC 9420 for the messages above (32-byte group id, empty
    /// authenticated data, member sender): a prefix shorter than this must be refused, a
    /// longer one must give the same header as the whole message.
    fn header_len(wire_format: WireFormat) -> usize {
        let group_id = 1 + 32;
        match wire_format {
            WireFormat::PublicMessage => 4 + group_id + 8 + (1 + 4) + 1 + 1,
            WireFormat::PrivateMessage => 4 + group_id + 8 + 1,
            _ => 4,
        }
    }

    #[test]
    fn every_prefix_of_a_real_message_is_truncated_until_the_header_is_complete() {
        for real in real_messages() {
            let full = peek(&real.bytes).unwrap();
            let needed = header_len(real.wire_format);
            assert!(needed <= real.bytes.len(), "{}", real.name);
            for len in 0..=real.bytes.len() {
                let result = peek(&real.bytes[..len]);
                if len < needed {
                    assert!(
                        matches!(result, Err(FramingError::Truncated { .. })),
                        "{} prefix {len}: {result:?}",
                        real.name
                    );
                } else {
                    assert_eq!(result.as_ref(), Ok(&full), "{} prefix {len}", real.name);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = peek(&bytes);
        }

        /// Random bodies behind a valid version and a public/private wire format reach the
        /// deeper parsing paths.
        #[test]
        fn random_bodies_never_panic(
            wire_format in 1u16..=2,
            body in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let msg = mls_message(wire_format, &body);
            if let Ok(framing) = peek(&msg) {
                let _ = framing.commit();
                prop_assert!(framing.content.is_some());
            }
        }

        /// Whatever the encoder writes, the parser reads back.
        #[test]
        fn encoded_headers_round_trip(
            group in proptest::collection::vec(any::<u8>(), 0..100),
            epoch in any::<u64>(),
            sender in prop_oneof![
                any::<u32>().prop_map(|i| { let mut s = vec![1u8]; s.extend(i.to_be_bytes()); s }),
                any::<u32>().prop_map(|i| { let mut s = vec![2u8]; s.extend(i.to_be_bytes()); s }),
                Just(vec![3u8]),
                Just(vec![4u8]),
            ],
            aad_len in prop_oneof![0usize..70, 16_000usize..17_000],
            ct in 1u8..=3,
            public in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..16),
        ) {
            let mut msg = if public {
                mls_message(1, &public_body(&group, epoch, &sender, &vec![0; aad_len], ct))
            } else {
                mls_message(2, &private_body(&group, epoch, ct))
            };
            msg.extend(tail);
            let framing = peek(&msg).unwrap();
            prop_assert_eq!(
                framing.content,
                header(&group, epoch, ContentType::from_code(ct).unwrap())
            );
        }
    }
}
