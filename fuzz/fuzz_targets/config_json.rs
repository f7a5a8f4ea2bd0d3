//! The JSON config model (`dwaar adapt` output, `POST /load` with application/json):
//! whatever deserializes serializes back to JSON that deserializes to the same model.
//! serde_json's nesting limit (128) bounds the recursion.
#![no_main]
use dwaar_config::model::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(config) = serde_json::from_slice::<Config>(data) else {
        return;
    };
    let json = serde_json::to_vec(&config).unwrap_or_default();
    let back = serde_json::from_slice::<Config>(&json);
    assert!(back.is_ok(), "serialized model does not load: {back:?}");
    if let Ok(back) = back {
        assert_eq!(back, config);
    }
});
