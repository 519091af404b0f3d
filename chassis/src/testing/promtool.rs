//! Checking a Prometheus exposition with Prometheus' own linter.

/// Runs `promtool check metrics` (Debian package `prometheus`) on `exposition`: `Err` with
/// promtool's report when it finds any problem, lint warnings (a family without HELP, a
/// counter not ending in `_total`) included. Without promtool installed the check fails when
/// [`backends_required`](super::backends_required), and is skipped with a note otherwise.
///
/// ```no_run
/// # async fn demo(service: &chassis::RunningService) {
/// let url = format!("http://{}/metrics", service.admin_addr());
/// let text = reqwest::get(url).await.unwrap().text().await.unwrap();
/// chassis::testing::promtool_check(&text).await.unwrap();
/// # }
/// ```
pub async fn promtool_check(exposition: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let spawned = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut promtool = match spawned {
        Ok(promtool) => promtool,
        Err(error) if super::backends_required() => {
            return Err(format!(
                "promtool is required when CI=true and cannot be run ({error}); install the Debian package prometheus"
            ));
        }
        Err(error) => {
            eprintln!("skipping the promtool check: {error}; with CI=true it fails instead");
            return Ok(());
        }
    };
    let mut stdin = promtool.stdin.take().expect("stdin is piped");
    stdin
        .write_all(exposition.as_bytes())
        .await
        .map_err(|e| format!("writing to promtool: {e}"))?;
    drop(stdin);
    let output = promtool
        .wait_with_output()
        .await
        .map_err(|e| format!("running promtool: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "promtool check metrics exited with {}:\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}
