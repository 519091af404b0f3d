#[chassis::main]
async fn main(_ctx: chassis::Context<()>) -> chassis::Result<()> {
    Ok(())
}
