#[chassis::main(prefix = "my-app", worker_threads = 0)]
async fn main(_ctx: chassis::Context<()>) -> chassis::Result<axum::Router> {
    Ok(axum::Router::new())
}
