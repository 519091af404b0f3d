//! Removing what a test's services declared on a shared broker.

/// Deletes what the chassis' `transport` (`"amqp"` or `"nats"`) declared on the broker at `url`
/// for `namespace`: over NATS the namespace's three streams, over RabbitMQ every queue and
/// exchange whose name starts with `{namespace}.`; the in-memory transport (`"memory"`) keeps
/// nothing on a broker, so there it deletes nothing. Returns how many were deleted.
///
/// Tests that run against a shared broker under a namespace of their own call it when they
/// end, so that runs do not pile up durable queues on the broker. AMQP 0-9-1 cannot list
/// queues, so over RabbitMQ the names come from `rabbitmqctl`, which must be on the machine
/// and allowed to talk to the node (as it is next to a local broker); without it this returns
/// `Err` saying so and deletes nothing.
///
/// ```no_run
/// # async fn demo() {
/// let namespace = "shop-test-1";
/// // ... the test's services run under `messaging.namespace = namespace` ...
/// let deleted = chassis::testing::delete_broker_namespace("nats", "nats://127.0.0.1:4222", namespace).await;
/// assert!(deleted.is_ok());
/// # }
/// ```
pub async fn delete_broker_namespace(transport: &str, url: &str, namespace: &str) -> Result<usize, String> {
    match transport {
        "memory" => Ok(0),
        #[cfg(feature = "nats")]
        "nats" => nats(url, namespace).await,
        #[cfg(feature = "amqp")]
        "amqp" => amqp(url, namespace).await,
        other => {
            let _ = (url, namespace);
            Err(format!(
                "cannot delete the broker objects of transport {other:?}: this build knows how for {}",
                known().join(", ")
            ))
        }
    }
}

fn known() -> Vec<&'static str> {
    let mut known = vec!["\"memory\""];
    if cfg!(feature = "nats") {
        known.push("\"nats\" (feature nats)");
    }
    if cfg!(feature = "amqp") {
        known.push("\"amqp\" (feature amqp)");
    }
    known
}

#[cfg(feature = "nats")]
async fn nats(url: &str, namespace: &str) -> Result<usize, String> {
    let config = crate::messaging::MessagingConfig {
        namespace: namespace.to_owned(),
        ..Default::default()
    };
    // Connecting makes sure the streams exist, so that each is there to delete.
    let transport = crate::messaging::NatsTransport::connect(url, &config)
        .await
        .map_err(|e| e.to_string())?;
    let mut deleted = 0;
    for name in transport.stream_names() {
        transport
            .jetstream()
            .delete_stream(&name)
            .await
            .map_err(|e| format!("cannot delete stream {name}: {e}"))?;
        deleted += 1;
    }
    Ok(deleted)
}

#[cfg(feature = "amqp")]
async fn amqp(url: &str, namespace: &str) -> Result<usize, String> {
    let prefix = format!("{namespace}.");
    let queues = rabbitmqctl(&["list_queues", "name"]).await?;
    let exchanges = rabbitmqctl(&["list_exchanges", "name"]).await?;
    let connection = lapin::Connection::connect(url, Default::default())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let mut deleted = 0;
    for queue in queues.iter().filter(|name| name.starts_with(&prefix)) {
        channel
            .queue_delete(queue.as_str().into(), Default::default())
            .await
            .map_err(|e| format!("cannot delete queue {queue}: {e}"))?;
        deleted += 1;
    }
    for exchange in exchanges.iter().filter(|name| name.starts_with(&prefix)) {
        channel
            .exchange_delete(exchange.as_str().into(), Default::default())
            .await
            .map_err(|e| format!("cannot delete exchange {exchange}: {e}"))?;
        deleted += 1;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(deleted)
}

/// The names `rabbitmqctl -q <args>` lists, one per line.
#[cfg(feature = "amqp")]
async fn rabbitmqctl(args: &[&str]) -> Result<Vec<String>, String> {
    let listed = tokio::process::Command::new("rabbitmqctl")
        .arg("-q")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run rabbitmqctl ({e}): it lists the queues to delete"))?;
    if !listed.status.success() {
        return Err(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&listed.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty() && *name != "name")
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::delete_broker_namespace;

    #[tokio::test]
    async fn the_memory_transport_keeps_nothing_on_a_broker_and_an_unknown_one_is_named_in_the_error() {
        assert_eq!(delete_broker_namespace("memory", "", "t_1").await, Ok(0));
        let error = delete_broker_namespace("kafka", "", "t_1").await.unwrap_err();
        assert!(error.contains("\"kafka\""), "{error}");
        assert!(error.contains("\"memory\""), "it lists what it knows: {error}");
    }
}
