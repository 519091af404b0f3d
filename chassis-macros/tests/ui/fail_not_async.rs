#[chassis::main]
fn main(_ctx: chassis::Context<()>) -> chassis::Result<axum::Router> {
    Ok(axum::Router::new())
}
