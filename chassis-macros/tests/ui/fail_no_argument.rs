#[chassis::main]
async fn main() -> chassis::Result<axum::Router> {
    Ok(axum::Router::new())
}
