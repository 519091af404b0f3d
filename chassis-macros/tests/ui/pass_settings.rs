#[derive(serde::Deserialize)]
#[serde(default)]
struct Settings {
    greeting: String,
}

#[chassis::main(prefix = "ORDERS", worker_threads = 2, crate = "chassis")]
async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<axum::Router> {
    // ORDERS__GREETING is not set: the settings came from the built-in default below.
    assert_eq!(ctx.settings().greeting, "hello");
    assert_eq!(ctx.config().service.name, "service-chassis-macros-tests");
    std::process::exit(0)
}

impl Default for Settings {
    fn default() -> Self {
        Self { greeting: "hello".into() }
    }
}
