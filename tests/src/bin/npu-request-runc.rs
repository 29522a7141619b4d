//! `npu-request-runc`: the shim, with an NPU request added to every container it creates.
//! Called exactly as runc is (runc's own suite calls it as `$RUNC`); on `create` and `run` it
//! adds `ASCEND_VISIBLE_DEVICES=0` to the bundle's `config.json` when the container asks for
//! nothing, then execs `npu-container-runtime` (next to this binary) with the same argv. The
//! conformance suite runs runc's tests through it on a simulated NPU host.
use npu_runtime::start::request::VISIBLE_DEVICES;

fn main() {
    let shim = std::env::current_exe()
        .expect("current_exe")
        .with_file_name("npu-container-runtime");
    npu_tests::runc::edit_spec_then_exec("npu-request-runc", &shim, |spec| {
        let Some(env) = spec
            .pointer_mut("/process/env")
            .and_then(serde_json::Value::as_array_mut)
        else {
            return false;
        };
        if env
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.starts_with(VISIBLE_DEVICES)))
        {
            return false;
        }
        env.push(format!("{VISIBLE_DEVICES}=0").into());
        true
    })
}
