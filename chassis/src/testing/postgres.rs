//! A schema of its own for each test that uses PostgreSQL.

/// Creates a new, empty schema in the database `url` names and answers a URL whose connections
/// use it (`search_path`), so a test's tables, including the chassis' own, start empty and stay
/// out of the way of every other test sharing the database. The schema is left behind for
/// inspection; its name is `prefix` (lowercase ASCII letters, digits and `_`), `_` and a UUID.
///
/// ```no_run
/// # async fn demo() -> Result<(), sqlx::Error> {
/// let url = chassis::testing::postgres_schema("postgres://postgres@127.0.0.1:5432/test", "orders").await?;
/// // configure the service under test with `postgres.url = url`
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
///
/// Needs the cargo feature `postgres`.
pub async fn postgres_schema(url: &str, prefix: &str) -> Result<String, sqlx::Error> {
    use sqlx::Connection as _;

    if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(sqlx::Error::Configuration(
            format!("schema prefix {prefix:?}: use lowercase ASCII letters, digits and '_'").into(),
        ));
    }
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{name}\"")))
        .execute(&mut connection)
        .await?;
    connection.close().await?;
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}options=-c%20search_path%3D{name}"))
}
