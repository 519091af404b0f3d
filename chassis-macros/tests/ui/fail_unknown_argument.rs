#[chassis::main(port = 8080)]
async fn main(_ctx: chassis::Context<()>) -> chassis::Result<axum::Router> {
    Ok(axum::Router::new())
}
