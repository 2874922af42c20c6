//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    modifiers(&BearerAuth),
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

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, content_type = "application/json")))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
