//! `vm-runc`: runc as this VM can run it, for privileged containers. The VM's root lacks
//! CAP_SYS_RESOURCE (DESIGN 6), so runc cannot give a privileged container every capability;
//! on `create` and `run` this drops that one capability from the bundle's spec, then execs
//! `runc` with the same argv. It sits below the shim (the shim's `runtimes`), so the shim
//! decides on the spec the engine wrote, privileged in full.
const MISSING: &str = "CAP_SYS_RESOURCE";

fn main() {
    npu_tests::runc::edit_spec_then_exec("vm-runc", "runc".as_ref(), |spec| {
        let Some(caps) = spec
            .pointer_mut("/process/capabilities")
            .and_then(serde_json::Value::as_object_mut)
        else {
            return false;
        };
        for set in caps
            .values_mut()
            .filter_map(serde_json::Value::as_array_mut)
        {
            set.retain(|c| c.as_str() != Some(MISSING));
        }
        true
    })
}
