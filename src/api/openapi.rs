//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "tolov", description = "One payment gateway for Payme, Click, ATMOS and Halyk ePay."),
    paths(
        super::payments::create,
        super::payments::list,
        super::payments::get_one,
        super::payments::cancel,
        super::payments::capture,
        super::payments::events,
        super::refunds::create,
        super::webhooks::events,
        super::webhooks::deliveries,
        super::webhooks::retry,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        crate::checkout::page::checkout_view,
        crate::checkout::page::hosted_page,
        crate::providers::payme::payme_endpoint_doc,
        crate::sandbox::payme::pay,
        crate::sandbox::payme::cancel,
        crate::providers::click::prepare_doc,
        crate::providers::click::complete_doc,
        crate::sandbox::click::pay,
        crate::providers::atmos::checkout::pre_apply,
        crate::providers::atmos::checkout::confirm,
        crate::providers::atmos::checkout::resend,
        crate::providers::atmos::callback::callback_doc,
        crate::providers::epay::postlink::postlink_doc,
        crate::sandbox::epay::pay,
        crate::sandbox::epay::payform,
        serve,
    ),
    components(schemas(crate::error::Problem, crate::error::FieldError)),
    modifiers(&BearerAuth, &CommonProblems),
    tags((name = "payments", description = "Merchant API (Bearer API key)"),
         (name = "checkout", description = "Payer's browser (client secret)"),
         (name = "ops", description = "Health, readiness, metrics"),
         (name = "webhooks", description = "Events and webhook deliveries (Bearer API key)"),
         (name = "providers", description = "Called by the payment providers"),
         (name = "sandbox", description = "Sandbox mode only: play a provider's side"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "api_key",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The refusals every problem+json route can give, whatever its handler: listed once here
/// rather than on each annotation. Provider callbacks answer in their provider's protocol and
/// are left alone.
struct CommonProblems;

const PROVIDER_CALLBACKS: [&str; 4] = [
    "/v1/payme",
    "/v1/click/",
    "/v1/atmos/callback",
    "/v1/epay/callback",
];

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let ours = (path.starts_with("/v1/") || path.starts_with("/sandbox/"))
                && !PROVIDER_CALLBACKS.iter().any(|c| path.starts_with(c));
            if !ours {
                continue;
            }
            if let Some(op) = item.get.as_mut() {
                add_common(op, false);
            }
            if let Some(op) = item.post.as_mut() {
                add_common(op, true);
            }
        }
    }
}

fn add_common(op: &mut Operation, has_body: bool) {
    let has_path_param = op
        .parameters
        .iter()
        .flatten()
        .any(|p| p.parameter_in == ParameterIn::Path);
    let mut add = |status: &str, description: &str| {
        let problem = ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build();
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| problem.into());
    };
    add(
        "503",
        "database_busy, database_unavailable or request_timeout: retry later",
    );
    if has_path_param {
        add("400", "invalid_path: the path is not valid UTF-8");
    }
    if has_body {
        add(
            "413",
            "payload_too_large: the body exceeds server.body_limit_bytes",
        );
        add(
            "415",
            "unsupported_media_type: the body is not application/json",
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, content_type = "application/json")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
