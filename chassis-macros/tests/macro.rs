//! `#[chassis::main]`: accepted input compiles and runs the user's function; bad input is a
//! compile error at the offending token.

#[test]
#[allow(unsafe_code)]
fn ui() {
    // The pass cases are real services: free ports, and their init function exits the process
    // with 0, which proves the expansion reached the user's code.
    for prefix in ["APP", "ORDERS"] {
        for (key, value) in [
            ("HTTP__PORT", "0"),
            ("ADMIN__PORT", "0"),
            ("TELEMETRY__LOG_LEVEL", "warn"),
        ] {
            // SAFETY: set before trybuild starts any thread; this binary has this one test.
            unsafe { std::env::set_var(format!("{prefix}__{key}"), value) };
        }
    }
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass_*.rs");
    cases.compile_fail("tests/ui/fail_*.rs");
}
