//! Span names and route labels of the service's routes, made once and kept.

/// The span name and route of a matched route, as `&'static str`.
pub(super) struct RouteNames {
    pub(super) span: &'static str,
    pub(super) route: &'static str,
}

/// Built once per route and method and kept: the set is bounded by the service's routes, and a
/// per-request `format!` and copy are measurable.
pub(super) fn names(method: &'static str, route: &str) -> &'static RouteNames {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    // Route templates of the service's own router, never client input: a fast unkeyed hash.
    type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;
    type Names = RwLock<FastMap<&'static str, FastMap<Box<str>, &'static RouteNames>>>;
    static NAMES: OnceLock<Names> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    if let Some(found) = names
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(method)
        .and_then(|routes| routes.get(route))
    {
        return found;
    }
    let built: &'static RouteNames = Box::leak(Box::new(RouteNames {
        span: Box::leak(format!("{method} {route}").into_boxed_str()),
        route: Box::leak(Box::<str>::from(route)),
    }));
    names
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(method)
        .or_default()
        .insert(route.into(), built);
    built
}
