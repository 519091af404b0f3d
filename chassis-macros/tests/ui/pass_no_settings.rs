use chassis::Context;

#[chassis::main]
async fn main(_ctx: Context<()>) -> chassis::Result<axum::Router> {
    std::process::exit(0)
}
