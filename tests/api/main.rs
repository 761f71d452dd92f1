//! Black-box tests of the HTTP API and the CLI: the real `tokenbox` binary on a loopback port,
//! a real database per test, and an in-test OAuth token endpoint.
//!
//! The scenarios listed in `conformance!` below form the conformance suite: each runs unchanged
//! against SQLite (`sqlite::...`) and against PostgreSQL (`postgres::...`). Backend-specific
//! tests are plain `#[tokio::test]`s in their modules.

mod admin;
mod audit_counting;
mod binb_token;
mod claims;
mod cli;
mod clients;
mod coherence;
mod connect_form;
mod demo;
mod e2e;
mod egress;
mod faults;
mod hardening;
mod helpers;
mod identity;
mod kinds;
mod knowledge;
mod listing;
mod operations;
mod outage;
mod proxy;
mod real_oauth;
mod refresh;
mod replicas;
mod security;
mod shutdown;
mod signup;
mod storage;
mod tenant_clients;
mod traces;
mod webhooks;
mod workload;

/// Instantiates every scenario once per backend.
macro_rules! conformance {
    ($($module:ident { $($name:ident),* $(,)? })*) => {
        mod sqlite {
            $(mod $module {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(crate::helpers::Backend::Sqlite).await
                })*
            })*
        }
        mod postgres {
            $(mod $module {
                $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::$module::$name(crate::helpers::Backend::Postgres).await
                })*
            })*
        }
    };
}

conformance! {
    audit_counting {
        audit_counts_add_up_to_the_served_reads,
    }
    knowledge {
        a_refresh_token_dying_within_the_window_is_warned_about_once,
        a_distant_refresh_deadline_is_not_warned_about,
        a_connection_without_a_required_scope_is_refused_and_listed,
        a_revoked_grant_is_found_by_the_health_check_before_any_job_asks,
    }
    binb_token {
        an_imported_connection_is_served_with_the_documented_json_and_headers,
        a_token_without_expiry_is_served_as_it_is_without_expires_fields,
        binb_token_answers_401_without_or_with_a_wrong_token_and_403_to_an_admin,
        unknown_connector_types_and_missing_connections_answer_404_with_their_codes,
        bad_input_gets_a_clear_400_json_error,
        healthz_answers_without_authentication,
        a_revoked_grant_answers_409_and_the_provider_is_not_called_again,
        a_provider_that_is_down_gives_503_with_retry_after_when_no_valid_token_remains,
        a_still_valid_token_is_served_while_the_provider_is_down_unless_min_validity_cannot_be_met,
        an_expired_token_of_an_unconfigured_connector_type_is_an_operator_problem,
    }
    kinds {
        api_keys_and_basic_credentials_are_verified_then_served_with_their_headers,
        client_credentials_tokens_are_minted_once_for_fifty_callers_with_either_client_auth,
        a_key_revoked_later_is_found_by_the_check_and_reported_with_its_webhook,
    }
    proxy {
        the_proxy_adds_the_credential_and_passes_everything_else_through,
        a_401_is_retried_once_with_a_fresh_token_and_a_post_only_when_the_caller_opts_in,
        a_429_pauses_the_connection_for_every_caller_on_every_replica,
        paths_that_leave_the_api_host_are_refused,
    }
    refresh {
        an_expired_token_is_refreshed_once_for_fifty_concurrent_requests,
        a_refresh_of_one_connection_does_not_delay_the_others,
        after_rotation_the_old_refresh_token_is_never_presented_again,
        a_provider_that_returns_no_new_refresh_token_keeps_the_old_one,
        min_validity_longer_than_the_remaining_lifetime_triggers_a_refresh,
        the_background_refresher_refreshes_ahead_and_skips_what_it_must,
        the_read_path_writes_nothing_while_the_token_is_good,
        one_minute_tokens_are_refreshed_once_for_concurrent_and_sequential_callers,
        a_token_shorter_than_the_refresh_margin_is_not_refreshed_on_every_request,
        an_access_token_issued_already_expired_is_never_served,
        refreshes_finishing_together_each_keep_their_own_tokens_across_a_restart,
    }
    shutdown {
        sigterm_during_a_refresh_stores_the_rotated_token_before_exit,
        sigterm_answers_the_request_waiting_on_a_refresh,
        sigterm_during_a_background_refresh_stores_the_rotated_token,
    }
    clients {
        a_service_account_obtains_a_jwt_and_uses_it_on_the_token_routes,
    }
    hardening {
        a_stolen_jwt_stays_dead_when_its_account_is_recreated_under_the_same_name,
        percent_encoded_paths_are_audited_and_scoped_like_plain_ones,
        anonymous_refusals_are_aggregated_in_the_audit_trail,
        old_audit_events_and_delivered_webhooks_are_pruned,
    }
    listing {
        the_listing_filters_pages_without_gaps_and_shows_no_secret,
    }
    security {
        the_audit_trail_records_each_action_and_reads_it_back,
        scoped_and_expiring_service_accounts_are_held_to_their_scope,
    }
    storage {
        a_ciphertext_moved_to_another_row_fails_to_decrypt,
        tokens_are_stored_as_ciphertexts_bound_to_their_row,
        a_restarted_server_keeps_serving_the_same_connection,
        a_wrong_or_missing_encryption_key_fails_at_startup_with_a_clear_message,
        migrate_applies_the_schema_and_serve_refuses_an_unknown_one,
        keys_rotate_under_load_then_the_old_key_can_be_removed,
    }
    signup {
        a_tenant_connects_through_the_link_and_the_job_gets_the_issued_token,
        a_replayed_unknown_or_missing_state_is_refused_and_nothing_is_stored,
        access_denied_stores_nothing_and_the_link_can_be_used_again,
        expired_and_spent_links_show_a_clear_page_without_redirect,
        link_creation_checks_return_to_params_and_the_connector_type,
        a_bad_placeholder_is_refused_and_a_good_one_reaches_the_provider_host,
        return_to_gets_a_303_after_the_signup_and_delete_removes_the_connection,
        connector_types_lists_the_catalog_and_whether_credentials_are_configured,
        the_cli_creates_connect_links,
        a_callback_from_a_browser_that_did_not_click_connect_is_refused,
        a_return_to_with_a_control_character_is_refused_and_one_with_unicode_is_normalised,
    }
    connect_form {
        a_wrong_api_key_shows_the_form_again_and_the_right_one_is_stored_and_served,
        a_basic_form_shows_its_labels_refuses_a_wrong_password_then_returns_to_the_app,
        a_form_post_from_another_browser_or_site_is_refused_and_stores_nothing,
    }
    tenant_clients {
        two_tenants_refresh_and_revoke_with_their_own_clients,
        a_connect_link_with_its_own_client_signs_up_and_refreshes_with_it,
        client_credentials_with_the_tenants_own_client_mint_with_it,
        keys_rotate_re_encrypts_the_tenant_clients,
    }
    admin {
        the_admin_cookie_is_a_server_side_session_and_cross_site_posts_are_refused,
    }
    workload {
        a_trusted_workload_reads_a_token_with_binb_token_and_through_the_exchange,
        kubernetes_and_github_actions_tokens_are_mapped_by_their_rules,
    }
    cli {
        service_account_create_prints_only_the_token_and_revoke_stops_it,
        connection_import_reads_a_token_set_on_stdin,
        tokenbox_token_prints_the_access_token_for_shell_scripts,
        no_token_or_secret_appears_in_trace_level_logs_across_every_path,
    }
}
