//! A Mesos v1 scheduler API request body on its way to a `strata.v1` call: the JSON decoding
//! (`allocator/src/mesos/json.rs`) and the checks and conversion of `convert.rs`, as the
//! `POST /api/v1/scheduler` handler runs them; then the call's protobuf form must re-encode
//! to the same bytes, and its resources go through the core's parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_allocator::mesos::{convert, json};
use strata_allocator_core::Resources;
use strata_proto::{call, operation};

fuzz_target!(|body: &[u8]| {
    let Ok(c) = serde_json::from_slice::<json::Call>(body) else {
        return;
    };
    let Some(kind) = c.kind.clone() else {
        return;
    };
    if kind == "SUBSCRIBE" {
        let Some(info) = c.subscribe.as_ref().and_then(|s| s.framework_info.as_ref()) else {
            return;
        };
        if let Ok(info) = convert::framework_info(info) {
            round_trip(&info);
        }
        return;
    }
    let Some(framework_id) = c.framework_id.clone().map(|f| f.value) else {
        return;
    };
    let Ok(Some((converted, refused))) = convert::call(&framework_id, &kind, c) else {
        return;
    };
    for (task_id, agent_id, why) in &refused.tasks {
        // What the handler sends back as TASK_ERROR updates.
        let _ = convert::refused_update(task_id, agent_id, why, 0.0);
    }
    if let call::Call::Accept(accept) = &converted {
        for op in accept
            .operations
            .iter()
            .filter_map(|o| o.operation.as_ref())
        {
            let resources = match op {
                operation::Operation::Launch(l) => {
                    l.tasks.iter().flat_map(|t| t.resources.clone()).collect()
                }
                operation::Operation::Reserve(r) => r.resources.clone(),
                operation::Operation::Unreserve(u) => u.resources.clone(),
            };
            let _ = Resources::from_proto(&resources);
        }
    }
    round_trip(&strata_proto::Call {
        framework_id,
        call: Some(converted),
    });
});

/// Encoding, decoding and encoding again gives as many bytes (NaNs forbid comparing values,
/// and map fields encode in hash order).
fn round_trip<M: prost::Message + Default>(m: &M) {
    let bytes = m.encode_to_vec();
    let back = M::decode(bytes.as_slice()).expect("a message we encoded decodes");
    // Lengths, not bytes: map fields (labels) encode in hash order.
    assert_eq!(
        back.encoded_len(),
        bytes.len(),
        "re-encoding changed the length"
    );
}
