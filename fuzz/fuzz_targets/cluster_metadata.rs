//! Fuzzes what the cluster manager reads from the network and its disk:
//! bucket-creation form bodies, metadata commands (Raft log entries and
//! RPC payloads are JSON of these), and the persisted state. Invariants: an
//! accepted form describes a bucket the rest of the node can build; any
//! sequence of decoded commands leaves a state whose every bucket config
//! validates and which survives a JSON round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_node::admin::parse_bucket_form;
use shoal_node::bucket::BucketKind;
use shoal_node::manager::{ClusterState, Command};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(form) = parse_bucket_form(rest) {
                let p = form.spec;
                if let Some(password) = &form.password {
                    assert!(password.len() >= 6);
                }
                assert!(!p.name.is_empty() && p.name.len() <= 100);
                assert!(p.replicas <= 3 && p.ram_quota_mb >= 1);
                assert!(p.num_vbuckets.is_power_of_two());
                if p.kind == BucketKind::Memcached {
                    assert_eq!((p.replicas, p.num_vbuckets), (0, 1));
                }
            }
        }
        1 => {
            let mut state = ClusterState::default();
            for (i, line) in rest.split(|b| *b == b'\n').enumerate() {
                if let Ok(command) = serde_json::from_slice::<Command>(line) {
                    let before = state.clone();
                    if state.apply(i as u64 + 1, command).is_err() {
                        assert_eq!(state, before, "a rejected command changed the state");
                    }
                }
            }
            for bucket in state.buckets.values() {
                if let Some(config) = state.bucket_config(bucket) {
                    assert!(config.validate().is_ok());
                }
            }
            let json = serde_json::to_vec(&state).expect("state serialises");
            let again: ClusterState = serde_json::from_slice(&json).expect("state parses back");
            assert_eq!(again, state);
        }
        _ => {
            if let Ok(state) = serde_json::from_slice::<ClusterState>(rest) {
                let json = serde_json::to_vec(&state).expect("state serialises");
                let again: ClusterState = serde_json::from_slice(&json).expect("parses back");
                assert_eq!(again, state);
            }
        }
    }
});
