//! RecordIO, the framing of Mesos' event streams: each record is its length in decimal
//! ASCII, a newline, then that many bytes (here compact JSON), and nothing after it.
//!
//! [`encode`] frames one record; [`Decoder`] is the reading side, fed bytes as they arrive
//! in any split (a record may span many HTTP chunks, a chunk may hold many records).

/// The longest record a [`Decoder`] accepts (64 MiB), so a corrupt length cannot make it
/// buffer without bound.
pub const MAX_RECORD: usize = 64 * 1024 * 1024;

/// Why a RecordIO stream could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordIoError {
    /// The length header holds something other than decimal digits.
    #[error(
        "bad RecordIO length header {header:?}: expected decimal digits then a newline; \
         is the stream RecordIO?"
    )]
    BadHeader {
        /// The header bytes read, lossily decoded.
        header: String,
    },
    /// The length is larger than [`MAX_RECORD`].
    #[error("RecordIO record of {length} bytes is larger than the {MAX_RECORD} bytes accepted")]
    TooLong {
        /// The announced length.
        length: usize,
    },
}

/// Frames `record` as `<length>\n<record>`.
pub fn encode(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 12);
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record);
    out
}

/// An incremental RecordIO reader.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// A decoder with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered that do not yet make a whole record.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole record, if the bytes fed so far hold one.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordIoError> {
        let Some(newline) = self.buf.iter().position(|&b| b == b'\n') else {
            // 20 digits hold any usize; more without a newline cannot be a header.
            if self.buf.len() > 20 || !self.buf.iter().all(u8::is_ascii_digit) {
                return Err(self.bad_header(self.buf.len().min(32)));
            }
            return Ok(None);
        };
        let header = &self.buf[..newline];
        if header.is_empty() || header.len() > 20 || !header.iter().all(u8::is_ascii_digit) {
            return Err(self.bad_header(newline));
        }
        let length: usize = std::str::from_utf8(header)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| self.bad_header(newline))?;
        if length > MAX_RECORD {
            return Err(RecordIoError::TooLong { length });
        }
        let end = newline + 1 + length;
        if self.buf.len() < end {
            return Ok(None);
        }
        let record = self.buf[newline + 1..end].to_vec();
        self.buf.drain(..end);
        Ok(Some(record))
    }

    fn bad_header(&self, len: usize) -> RecordIoError {
        RecordIoError::BadHeader {
            header: String::from_utf8_lossy(&self.buf[..len]).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_length_newline_record() {
        assert_eq!(encode(b"{\"a\":1}"), b"7\n{\"a\":1}".to_vec());
        assert_eq!(encode(b""), b"0\n".to_vec());
    }

    #[test]
    fn decodes_records_split_at_every_byte() {
        let records: Vec<Vec<u8>> = vec![
            b"{\"type\":\"SUBSCRIBED\"}".to_vec(),
            Vec::new(),
            vec![b'x'; 300],
            "{\"message\":\"caf\u{e9}\"}".as_bytes().to_vec(),
        ];
        let stream: Vec<u8> = records.iter().flat_map(|r| encode(r)).collect();
        for split in 1..stream.len() {
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                decoder.feed(piece);
                while let Some(r) = decoder.next_record().expect("valid stream") {
                    out.push(r);
                }
            }
            assert_eq!(out, records, "split every {split} bytes");
            assert_eq!(decoder.pending(), 0);
        }
    }

    #[test]
    fn rejects_bad_headers_and_huge_lengths() {
        let mut d = Decoder::new();
        d.feed(b"HTTP/1.1 200\n");
        assert!(matches!(
            d.next_record(),
            Err(RecordIoError::BadHeader { .. })
        ));
        let mut d = Decoder::new();
        d.feed(b"12a");
        assert!(d.next_record().is_err());
        let mut d = Decoder::new();
        d.feed(b"99999999999\n");
        assert_eq!(
            d.next_record(),
            Err(RecordIoError::TooLong {
                length: 99_999_999_999
            })
        );
    }
}
