//! Span names and route labels of the service's routes, made once and kept.

/// The span name and route of a matched route, as `&'static str`.
pub(super) struct RouteNames {
    pub(super) span: &'static str,
    pub(super) route: &'static str,
    /// The method the names are of.
    method: &'static str,
}

/// Built once per route and method and kept: the set is bounded by the service's routes, and a
/// per-request `format!` and copy are measurable.
pub(super) fn names(method: &'static str, route: &str) -> &'static RouteNames {
    // Each thread remembers the last names found per slot, keyed by where the route's text
    // lies (a route's template is one allocation the router hands every request of it): a
    // hit costs a comparison instead of the lock and two hashes. The text is compared too,
    // so a template freed and another allocated at its address cannot be given its names.
    const SLOTS: usize = 16;
    type Slot = std::cell::Cell<Option<&'static RouteNames>>;
    thread_local! {
        static RECENT: [Slot; SLOTS] = const { [const { Slot::new(None) }; SLOTS] };
    }
    let slot = (route.as_ptr() as usize >> 4) % SLOTS;
    let recent = RECENT.try_with(|recent| recent[slot].get()).ok().flatten();
    if let Some(names) = recent
        && names.method == method
        && names.route == route
    {
        return names;
    }
    let found = shared_names(method, route);
    let _ = RECENT.try_with(|recent| recent[slot].set(Some(found)));
    found
}

/// The names of `method` and `route` from the process' map, made when they are new.
fn shared_names(method: &'static str, route: &str) -> &'static RouteNames {
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
        method,
    }));
    names
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(method)
        .or_default()
        .insert(route.into(), built);
    built
}

#[cfg(test)]
mod tests {
    use super::names;

    #[test]
    fn names_follow_the_route_text_and_the_method_not_where_the_text_lies() {
        let mut route = String::from("/users/{id}");
        let post = names("POST", &route);
        assert_eq!((post.span, post.route), ("POST /users/{id}", "/users/{id}"));
        let get = names("GET", &route);
        assert_eq!((get.span, get.route), ("GET /users/{id}", "/users/{id}"));
        // Another template in the same allocation, as when a router is dropped and another
        // one's template lands where the first one's was.
        route.replace_range(.., "/order/{id}");
        let moved = names("GET", &route);
        assert_eq!((moved.span, moved.route), ("GET /order/{id}", "/order/{id}"));
        assert!(
            std::ptr::eq(names("GET", "/users/{id}"), get),
            "made once per route and method"
        );
    }
}
