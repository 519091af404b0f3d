//! Procedural macros of the chassis. Use them through the `chassis` crate: `#[chassis::main]`.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::parse::Parser as _;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned as _;
use syn::{Expr, ExprLit, FnArg, ItemFn, Lit, MetaNameValue, ReturnType, Token};

/// Turns `async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<axum::Router>` into
/// the process' `main`: it builds the tokio runtime and calls `chassis::run`, which loads the
/// config, installs telemetry and metrics, serves the returned routes and shuts down gracefully.
///
/// The service's name and version default to the crate's (`CARGO_PKG_NAME`,
/// `CARGO_PKG_VERSION`).
///
/// Arguments, all optional:
///
/// - `prefix = "ORDERS"`: the environment variable prefix (default `"APP"`),
/// - `worker_threads = 4`: tokio worker threads (default: one per core),
/// - `crate = "path::to::chassis"`: where the chassis crate is, when it is re-exported.
///
/// ```ignore
/// #[chassis::main(prefix = "ORDERS")]
/// async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<axum::Router> {
///     Ok(axum::Router::new())
/// }
/// ```
#[proc_macro_attribute]
pub fn main(args: TokenStream, item: TokenStream) -> TokenStream {
    let original = TokenStream2::from(item.clone());
    match expand(args.into(), original.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            let mut tokens = error.to_compile_error();
            tokens.extend(keep_item(original));
            tokens.into()
        }
    }
}

/// The item to emit beside a `compile_error!`, so IDEs and later diagnostics still see the
/// function. Renamed out of the way, with an empty `main` in its place: an `async fn main`
/// would only add a second, misleading error.
fn keep_item(original: TokenStream2) -> TokenStream2 {
    match syn::parse2::<ItemFn>(original.clone()) {
        Ok(mut function) => {
            let name = function.sig.ident.clone();
            function.sig.ident = syn::Ident::new("__chassis_main_with_errors", name.span());
            quote! {
                #[allow(dead_code)]
                #function
                fn #name() {}
            }
        }
        Err(_) => original,
    }
}

struct Args {
    prefix: Option<String>,
    worker_threads: Option<usize>,
    krate: syn::Path,
}

fn parse_args(args: TokenStream2) -> syn::Result<Args> {
    let mut parsed = Args {
        prefix: None,
        worker_threads: None,
        krate: syn::parse_quote!(::chassis),
    };
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(args)?;
    for pair in pairs {
        let Some(name) = pair.path.get_ident().map(ToString::to_string) else {
            return Err(syn::Error::new(pair.path.span(), UNKNOWN_ARGUMENT));
        };
        match name.as_str() {
            "prefix" => {
                let value = string_value(&pair.value, "prefix = \"ORDERS\"")?;
                let valid = !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(syn::Error::new(
                        pair.value.span(),
                        "the prefix must be non-empty letters, digits or '_' (it starts environment variable names)",
                    ));
                }
                parsed.prefix = Some(value);
            }
            "worker_threads" => {
                let Expr::Lit(ExprLit { lit: Lit::Int(int), .. }) = &pair.value else {
                    return Err(syn::Error::new(
                        pair.value.span(),
                        "expected an integer: `worker_threads = 4`",
                    ));
                };
                let threads: usize = int.base10_parse()?;
                if threads == 0 {
                    return Err(syn::Error::new(int.span(), "worker_threads must be at least 1"));
                }
                parsed.worker_threads = Some(threads);
            }
            "crate" => {
                let value = string_value(&pair.value, "crate = \"my_platform::chassis\"")?;
                parsed.krate = syn::parse_str(&value).map_err(|_| {
                    syn::Error::new(pair.value.span(), "expected a path such as \"my_platform::chassis\"")
                })?;
            }
            _ => return Err(syn::Error::new(pair.path.span(), UNKNOWN_ARGUMENT)),
        }
    }
    Ok(parsed)
}

const UNKNOWN_ARGUMENT: &str =
    "unknown argument; expected `prefix = \"...\"`, `worker_threads = N` or `crate = \"...\"`";

fn string_value(value: &Expr, example: &str) -> syn::Result<String> {
    match value {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        _ => Err(syn::Error::new(
            value.span(),
            format!("expected a string literal: `{example}`"),
        )),
    }
}

fn expand(args: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let args = parse_args(args)?;
    let function: ItemFn = syn::parse2(item)?;
    let sig = &function.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "#[chassis::main] needs an `async fn`: `async fn main(ctx: chassis::Context<Settings>) -> chassis::Result<axum::Router>`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "#[chassis::main] functions cannot be generic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    let (Some(context), None) = (inputs.next(), inputs.next()) else {
        return Err(syn::Error::new(
            if sig.inputs.is_empty() {
                sig.ident.span()
            } else {
                sig.inputs.span()
            },
            "#[chassis::main] functions take exactly one argument: `ctx: chassis::Context<Settings>` (use `Context<()>` for no settings)",
        ));
    };
    let FnArg::Typed(context) = context else {
        return Err(syn::Error::new(
            context.span(),
            "#[chassis::main] functions cannot take `self`",
        ));
    };
    let ReturnType::Type(_, output) = &sig.output else {
        return Err(syn::Error::new(
            sig.paren_token.span.close(),
            "#[chassis::main] functions return the service's routes: `-> chassis::Result<axum::Router>`",
        ));
    };

    let krate = &args.krate;
    let attrs = &function.attrs;
    let vis = &function.vis;
    let name = &sig.ident;
    let block = &function.block;
    let context_pat = &context.pat;
    let context_ty = &context.ty;
    let prefix = args.prefix.map(|prefix| quote!(.prefix(#prefix)));
    let threads = args.worker_threads.map(|n| quote!(.worker_threads(#n)));
    // Spanned at the return type, so a wrong one is reported there.
    let run = quote_spanned!(output.span()=> #krate::run(options, __chassis_service_init));
    Ok(quote! {
        #(#attrs)*
        #vis fn #name() -> ::std::process::ExitCode {
            async fn __chassis_service_init(#context_pat: #context_ty) -> #output #block
            let options = #krate::Options::new()
                .service_defaults(::std::env!("CARGO_PKG_NAME"), ::std::env!("CARGO_PKG_VERSION"))
                #prefix
                #threads;
            #run
        }
    })
}
