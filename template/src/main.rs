#[chassis::main]
async fn main(ctx: chassis::Context<{{crate_name}}::Settings>) -> chassis::Result<axum::Router> {
    {{crate_name}}::init(ctx).await
}
