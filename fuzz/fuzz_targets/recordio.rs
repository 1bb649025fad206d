//! The RecordIO decoder of Mesos event streams (`allocator/src/mesos/recordio.rs`), fed the
//! input in the pieces its first byte chooses: it never panics, decodes what a plain reading
//! of the whole stream finds, and a stream of records it encoded decodes back to them whatever the
//! split.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_allocator::mesos::recordio::{self, Decoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let piece = usize::from(split).max(1);

    // Arbitrary bytes: the records decoded, whatever the split, are those a plain reading of
    // the whole stream finds before its first bad header.
    let mut decoder = Decoder::new();
    let mut decoded = Vec::new();
    'feed: for chunk in stream.chunks(piece) {
        decoder.feed(chunk);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => decoded.push(record),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert_eq!(
        decoded,
        reference(stream),
        "the decoder disagrees with a plain reading"
    );

    // Records we frame: split the stream into records at its newlines, frame them, decode.
    let records: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    let framed: Vec<u8> = records.iter().flat_map(|r| recordio::encode(r)).collect();
    let mut decoder = Decoder::new();
    let mut out = Vec::new();
    for chunk in framed.chunks(piece) {
        decoder.feed(chunk);
        while let Some(record) = decoder.next_record().expect("a framed stream decodes") {
            out.push(record);
        }
    }
    assert_eq!(out, records, "framed records came back different");
    assert_eq!(decoder.pending(), 0);
});

/// The records of `stream` up to its first bad or incomplete one, read in one go.
fn reference(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut rest = stream;
    while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
        let header = &rest[..newline];
        if header.is_empty() || header.len() > 20 || !header.iter().all(u8::is_ascii_digit) {
            break;
        }
        let Some(length) = std::str::from_utf8(header)
            .ok()
            .and_then(|h| h.parse::<usize>().ok())
            .filter(|&l| l <= recordio::MAX_RECORD)
        else {
            break;
        };
        let Some(record) = rest.get(newline + 1..newline + 1 + length) else {
            break;
        };
        records.push(record.to_vec());
        rest = &rest[newline + 1 + length..];
    }
    records
}
