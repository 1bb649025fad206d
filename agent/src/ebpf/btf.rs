//! Field offsets from the kernel's BTF (`/sys/kernel/btf/vmlinux`), for the programs that read
//! a kernel structure's field: aya has no CO-RE for Rust programs, so the agent finds the offset
//! at start and hands it to the program as a global. Only what that needs is parsed: the type
//! section's records (to skip them) and the members of structs and unions, anonymous ones
//! included (a field inside an unnamed struct is found at the sum of the offsets).
//!
//! The format is the kernel's `Documentation/bpf/btf.rst`: a header, then the type and string
//! sections, each type a 12-byte record followed by data whose size its kind gives.

use std::path::Path;

/// The kernel's BTF.
pub(crate) const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_ENUM64: u32 = 19;
/// How deep anonymous members are followed.
const MAX_NESTING: usize = 8;

/// A field's offset cannot be found.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BtfError {
    /// The file cannot be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The data is not BTF as this parser knows it.
    #[error("the kernel's BTF is malformed at byte {at}: {reason}")]
    Malformed {
        /// Where.
        at: usize,
        /// What.
        reason: &'static str,
    },
    /// No struct of that name, or no such member in it.
    #[error("the kernel's BTF has no {what}")]
    Missing {
        /// `struct task_struct` or `member se of struct task_struct`.
        what: String,
    },
    /// The member is a bitfield (no byte offset).
    #[error("{field} is a bitfield in the kernel's BTF")]
    Bitfield {
        /// The member.
        field: String,
    },
}

/// One type record: kind, name, vlen, and where its data starts.
#[derive(Debug, Clone, Copy)]
struct Type {
    kind: u32,
    name_off: u32,
    vlen: u32,
    kind_flag: bool,
    data: usize,
}

/// The parsed type section of one BTF blob.
pub(crate) struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Type id - 1 → record (id 0 is `void`).
    index: Vec<Type>,
}

fn u32_at(bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed {
            at,
            reason: "truncated",
        })
}

impl<'a> Btf<'a> {
    /// Parses `data` (little-endian, as on x86-64 and arm64).
    pub(crate) fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let magic = data.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(MAGIC) {
            return Err(BtfError::Malformed {
                at: 0,
                reason: "no BTF magic (or not little-endian)",
            });
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let section = |off_at: usize, len_at: usize| -> Result<&'a [u8], BtfError> {
            let off = u32_at(data, off_at)? as usize;
            let len = u32_at(data, len_at)? as usize;
            let start = hdr_len.checked_add(off).ok_or(BtfError::Malformed {
                at: off_at,
                reason: "section offset overflows",
            })?;
            data.get(start..start.saturating_add(len))
                .ok_or(BtfError::Malformed {
                    at: off_at,
                    reason: "section beyond the data",
                })
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut index = Vec::new();
        let mut at = 0;
        while at < types.len() {
            let name_off = u32_at(types, at)?;
            let info = u32_at(types, at + 4)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let data = at + 12;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                _ => 0,
            };
            index.push(Type {
                kind,
                name_off,
                vlen,
                kind_flag: info >> 31 == 1,
                data,
            });
            at = data + extra;
        }
        if at != types.len() {
            return Err(BtfError::Malformed {
                at,
                reason: "the last type runs past the type section",
            });
        }
        Ok(Self {
            types,
            strings,
            index,
        })
    }

    fn name(&self, off: u32) -> &'a [u8] {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn by_id(&self, id: u32) -> Option<&Type> {
        id.checked_sub(1).and_then(|i| self.index.get(i as usize))
    }

    /// The id of the struct named `name` (the first with members, skipping declarations).
    fn struct_id(&self, name: &str) -> Option<u32> {
        self.index
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == name.as_bytes()
            })
            .map(|i| i as u32 + 1)
    }

    /// The byte offset and type id of member `member` of the struct or union `id`, looking into
    /// its anonymous members.
    fn member(&self, id: u32, member: &str, depth: usize) -> Result<Option<(u64, u32)>, BtfError> {
        let Some(t) = self.by_id(id) else {
            return Ok(None);
        };
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > MAX_NESTING {
            return Ok(None);
        }
        for i in 0..t.vlen as usize {
            let at = t.data + 12 * i;
            let name_off = u32_at(self.types, at)?;
            let type_id = u32_at(self.types, at + 4)?;
            let offset = u32_at(self.types, at + 8)?;
            // With kind_flag, the top 8 bits are a bitfield's size and the rest its bit offset.
            let (bit_offset, bitfield) = if t.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24 != 0)
            } else {
                (offset, false)
            };
            let name = self.name(name_off);
            if name == member.as_bytes() {
                if bitfield || !bit_offset.is_multiple_of(8) {
                    return Err(BtfError::Bitfield {
                        field: member.to_owned(),
                    });
                }
                return Ok(Some((u64::from(bit_offset / 8), type_id)));
            }
            if name.is_empty() {
                let inner = self.resolve(type_id);
                if let Some((off, ty)) = self.member(inner, member, depth + 1)? {
                    return Ok(Some((u64::from(bit_offset / 8) + off, ty)));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedefs and qualifiers (const, volatile, restrict, type tags) to the type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..MAX_NESTING * 4 {
            match self.by_id(id) {
                // typedef, volatile, const, restrict, type_tag: the type id is in the size slot.
                Some(t) if matches!(t.kind, 8..=11 | 18) => match u32_at(self.types, t.data - 4) {
                    Ok(next) => id = next,
                    Err(_) => return id,
                },
                _ => return id,
            }
        }
        id
    }

    /// The byte offset of `path` (members, outermost first) from the start of `struct name`.
    pub(crate) fn offset_of(&self, name: &str, path: &[&str]) -> Result<u64, BtfError> {
        let mut id = self.struct_id(name).ok_or_else(|| BtfError::Missing {
            what: format!("struct {name}"),
        })?;
        let mut total = 0;
        for member in path {
            let (offset, type_id) =
                self.member(id, member, 0)?
                    .ok_or_else(|| BtfError::Missing {
                        what: format!("member {member} of struct {name} (path {})", path.join(".")),
                    })?;
            total += offset;
            id = self.resolve(type_id);
        }
        Ok(total)
    }
}

/// The offset of `task_struct.se.sum_exec_runtime` (the kernel's own count of a thread's
/// nanoseconds on a CPU) in the BTF at `path`.
pub(crate) fn task_runtime_offset(path: &Path) -> Result<u64, BtfError> {
    let data = std::fs::read(path).map_err(|e| BtfError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Btf::parse(&data)?.offset_of("task_struct", &["se", "sum_exec_runtime"])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob: `int`, `struct inner { long pad; u64 value; }`, a typedef of it, and
    /// `struct outer { int a; union { int b; inner_t nested; }; }` (an anonymous union).
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0pad\0value\0inner_t\0outer\0a\0b\0nested\0";
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut record = |name: u32, kind: u32, vlen: u32, flag: bool, size: u32, data: &[u32]| {
            let info = (u32::from(flag) << 31) | (kind << 24) | vlen;
            for word in [name, info, size].iter().chain(data) {
                types.extend_from_slice(&word.to_le_bytes());
            }
        };
        // 1: int (4 bytes, 32 bits).
        record(s("int"), KIND_INT, 0, false, 4, &[32]);
        // 2: struct inner { pad at 0, value at 64 bits }.
        record(
            s("inner"),
            KIND_STRUCT,
            2,
            false,
            16,
            &[s("pad"), 1, 0, s("value"), 1, 64],
        );
        // 3: typedef inner_t -> 2.
        record(s("inner_t"), 8, 0, false, 2, &[]);
        // 4: anonymous union { b; nested } with kind_flag (bitfield encoding, sizes 0).
        record(
            0,
            KIND_UNION,
            2,
            true,
            16,
            &[s("b"), 1, 0, s("nested"), 3, 0],
        );
        // 5: struct outer { a at 0; anonymous union at 64 bits }.
        record(
            s("outer"),
            KIND_STRUCT,
            2,
            false,
            24,
            &[s("a"), 1, 0, 0, 4, 64],
        );
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    #[test]
    fn offsets_are_found_through_typedefs_and_anonymous_members() {
        let data = blob();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset_of("inner", &["value"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["nested"]).unwrap(), 8);
        assert_eq!(btf.offset_of("outer", &["nested", "value"]).unwrap(), 16);
        let missing = btf.offset_of("outer", &["nope"]).unwrap_err().to_string();
        assert!(missing.contains("member nope of struct outer"), "{missing}");
        assert!(btf.offset_of("absent", &["x"]).is_err());
    }

    #[test]
    fn abuse_truncated_or_foreign_data_is_refused_not_read_past() {
        let data = blob();
        for len in [0, 1, 5, 23, 30, data.len() - 1] {
            assert!(Btf::parse(&data[..len]).is_err(), "{len} bytes parsed");
        }
        let mut wrong = data.clone();
        wrong[0] = 0;
        assert!(Btf::parse(&wrong).is_err());
        // A vlen far past the section.
        let mut long = data;
        long[24 + 16 + 4] = 0xff;
        assert!(Btf::parse(&long).is_err());
    }

    #[test]
    fn the_running_kernels_task_runtime_offset_is_found() {
        if !Path::new(KERNEL_BTF).exists() {
            eprintln!("skipped: this kernel has no {KERNEL_BTF}");
            return;
        }
        let offset = task_runtime_offset(Path::new(KERNEL_BTF)).unwrap();
        // task_struct begins with thread_info and state; `se` comes later, and the runtime
        // counter is a u64 inside it.
        assert!(offset > 64 && offset.is_multiple_of(8), "{offset}");
    }
}
