//! The Store contract: every method, run identically against SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use futures::future::join_all;
use serde_json::json;
use tolov::config::Settings;
use tolov::domain::*;
use tolov::lifecycle::status_change;
use tolov::money::{Currency, Money};
use tolov::store::{Store, StoreError};

use crate::helpers::{fresh_database, test_settings, Db};

async fn open(db: Db) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    let (url, dir) = fresh_database(db).await;
    let settings: Settings = test_settings(url);
    let store = tolov::store::connect(&settings.database)
        .await
        .expect("connect + migrate");
    (store, dir)
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .expect("time")
}

fn new_payment(
    order: &str,
    provider: ProviderKind,
    amount: i64,
    created: chrono::DateTime<Utc>,
) -> NewPayment {
    NewPayment {
        id: PaymentId::generate(),
        order_id: order.to_owned(),
        provider,
        amount: Money::from_minor(amount, provider.currency()).expect("money"),
        description: Some("Чай / choy".to_owned()),
        return_url: Some("https://shop.example/r".to_owned()),
        language: Language::Uz,
        metadata: json!({"k": [1, 2, {"x": null}]}),
        provider_data: json!({"checkout_url": "https://p.example/x"}),
        client_secret_hash: "ab".repeat(32),
        expires_at: created + Duration::minutes(30),
        created_at: created,
        receipt: None,
    }
}

async fn insert(store: &dyn Store, p: &NewPayment) -> Payment {
    store
        .create_payment(p, &NewEvent::created(p, Actor::Merchant), None)
        .await
        .expect("create")
}

fn transaction(p: &Payment, external: &str, provider_time: i64) -> Transaction {
    Transaction {
        provider_time: Some(provider_time),
        create_time: Some(provider_time + 5),
        ..Transaction::new(p, p.provider, external.to_owned(), "1", json!({}), t0())
    }
}

on_both!(
    payment_round_trips_every_field,
    unknown_payment_is_none,
    listing_filters_orders_and_pages,
    counts_and_expired_open_payments,
    status_change_is_compare_and_set,
    failed_change_writes_nothing,
    transactions_are_unique_per_provider_and_versioned,
    refunds_settle_once,
    idempotency_keys_claim_complete_delete,
    payment_creation_claims_its_idempotency_key_atomically,
    settings_survive_and_overwrite,
    twenty_concurrent_changes_apply_once,
    twenty_concurrent_transaction_inserts_keep_one,
    ping_answers,
    counters_hand_out_each_number_once,
    joined_reads_match_the_single_reads,
    recent_copies_equal_the_stored_rows,
    due_payments_are_read_page_after_page,
    stale_pending_refunds_are_read_page_after_page,
    rechecks_are_scheduled_with_their_change_and_taken_once,
    the_schema_refuses_values_outside_their_sets,
    old_delivered_messages_are_pruned_and_nothing_else,
);

/// The store's copies of a Payme transaction and its payment equal a fresh read; returns the read.
async fn assert_copies_are_current(store: &dyn Store, external_id: &str) -> (Transaction, Payment) {
    let copies = store
        .recent_transaction_with_payment(ProviderKind::Payme, external_id)
        .expect("remembered on change");
    let stored = store
        .get_transaction_with_payment(ProviderKind::Payme, external_id)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(copies, stored);
    stored
}

/// What the store remembers of the rows it wrote (`Store::recent_*`, the expected state of the
/// next compare-and-set change) is exactly what a read returns, after every kind of change; a
/// refused change leaves no copy behind.
async fn recent_copies_equal_the_stored_rows(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Payme, 700, t0()),
    )
    .await;
    let copy = store.recent_payment(&p.id).expect("remembered on insert");
    assert_eq!(Some(copy), store.get_payment(&p.id).await.expect("get"));

    // Sub-millisecond clocks: storage keeps milliseconds, and so must the copies.
    let now = t0() + Duration::nanoseconds(1_234_567_891);
    let mut create =
        status_change(&p, PaymentStatus::Processing, Actor::Provider, None, now).expect("allowed");
    create.insert_transaction = Some(Transaction {
        version: 3,
        ..transaction(&p, "ext-r", 1_000)
    });
    store.apply(&create).await.expect("create");
    let stored = assert_copies_are_current(store.as_ref(), "ext-r").await;

    let (t, processing) = stored;
    let mut perform = status_change(
        &processing,
        PaymentStatus::Succeeded,
        Actor::Provider,
        None,
        now,
    )
    .expect("allowed");
    perform.update_transaction = Some(TransactionUpdate {
        id: t.id.clone(),
        expected_version: t.version,
        state: "2".into(),
        perform_time: Some(2_000),
        cancel_time: None,
        reason: None,
        masked_card: Some("8600 **** **** 0001".into()),
        raw_status: Some("paid".into()),
        data: json!({"fiscal": {"receipt_id": 1}}),
        now: now + Duration::milliseconds(10),
    });
    perform
        .payment
        .as_mut()
        .expect("payment update")
        .provider_data = Some(json!({"checkout_url": "https://p.example/y"}));
    store.apply(&perform).await.expect("perform");
    assert_copies_are_current(store.as_ref(), "ext-r").await;

    // The same change again expects versions that are gone: refused, copies dropped.
    assert!(matches!(
        store.apply(&perform).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.recent_payment(&p.id).is_none());
    assert!(store
        .recent_transaction_with_payment(ProviderKind::Payme, "ext-r")
        .is_none());
}

/// The one-query reads the Payme hot path uses return exactly what the separate reads return,
/// with every absent side as `None` (all four combinations).
async fn joined_reads_match_the_single_reads(db: Db) {
    let (store, _dir) = open(db).await;
    let mine = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Payme, 700, t0()),
    )
    .await;
    let other = insert(
        store.as_ref(),
        &new_payment("o2", ProviderKind::Payme, 900, t0()),
    )
    .await;
    let mut t = transaction(&other, "ext-1", 3_000);
    t.masked_card = Some("8600 **** **** 0001".into());
    t.perform_time = Some(3_500);
    store
        .apply(&Change {
            insert_transaction: Some(t.clone()),
            ..Change::default()
        })
        .await
        .expect("insert");
    let single_tx = store
        .get_transaction(ProviderKind::Payme, "ext-1")
        .await
        .expect("tx")
        .expect("exists");
    let single_other = store
        .get_payment(&other.id)
        .await
        .expect("get")
        .expect("exists");

    let joined = store
        .get_transaction_with_payment(ProviderKind::Payme, "ext-1")
        .await
        .expect("join")
        .expect("exists");
    assert_eq!(joined, (single_tx.clone(), single_other));
    assert!(store
        .get_transaction_with_payment(ProviderKind::Click, "ext-1")
        .await
        .expect("join")
        .is_none());

    // Both present, and the transaction belongs to another payment: returned as found.
    let both = store
        .get_payment_and_transaction(&mine.id, ProviderKind::Payme, "ext-1")
        .await
        .expect("both");
    assert_eq!(both, (Some(mine.clone()), Some(single_tx.clone())));
    let only_payment = store
        .get_payment_and_transaction(&mine.id, ProviderKind::Payme, "nope")
        .await
        .expect("payment only");
    assert_eq!(only_payment, (Some(mine), None));
    let only_tx = store
        .get_payment_and_transaction(&PaymentId::generate(), ProviderKind::Payme, "ext-1")
        .await
        .expect("tx only");
    assert_eq!(only_tx, (None, Some(single_tx)));
    let neither = store
        .get_payment_and_transaction(&PaymentId::generate(), ProviderKind::Payme, "nope")
        .await
        .expect("neither");
    assert_eq!(neither, (None, None));
}

async fn counters_hand_out_each_number_once(db: Db) {
    let (store, _dir) = open(db).await;
    assert_eq!(store.next_number("click").await.expect("first"), 1);
    assert_eq!(store.next_number("click").await.expect("second"), 2);
    assert_eq!(store.next_number("epay").await.expect("other counter"), 1);
    assert_eq!(
        store
            .next_number_from("atmos", 500_000)
            .await
            .expect("from"),
        500_000
    );
    assert_eq!(
        store
            .next_number_from("atmos", 7)
            .await
            .expect("from again"),
        500_001,
        "the first value matters only on first use"
    );
    let mut got: Vec<i64> = join_all((0..20).map(|_| {
        let store = store.clone();
        async move { store.next_number("click").await.expect("next") }
    }))
    .await;
    got.sort_unstable();
    assert_eq!(
        got,
        (3..=22).collect::<Vec<_>>(),
        "20 concurrent calls, 20 distinct numbers"
    );
}

async fn payment_round_trips_every_field(db: Db) {
    let (store, _dir) = open(db).await;
    let p = new_payment("o-1", ProviderKind::Epay, 12_345, t0());
    let created = insert(store.as_ref(), &p).await;
    let got = store
        .get_payment(&p.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got, created);
    assert_eq!(
        got.amount,
        Money::from_minor(12_345, Currency::Kzt).expect("money")
    );
    assert_eq!(got.status, PaymentStatus::Pending);
    assert_eq!(got.metadata, json!({"k": [1, 2, {"x": null}]}));
    assert_eq!(got.description.as_deref(), Some("Чай / choy"));
    assert_eq!(got.version, 0);
    let events = store.list_events(&p.id).await.expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "payment.created");
    assert_eq!(events[0].to_status, Some(PaymentStatus::Pending));
}

async fn unknown_payment_is_none(db: Db) {
    let (store, _dir) = open(db).await;
    assert!(store
        .get_payment(&PaymentId::generate())
        .await
        .expect("get")
        .is_none());
    assert!(store
        .list_events(&PaymentId::generate())
        .await
        .expect("events")
        .is_empty());
    assert!(store
        .get_transaction(ProviderKind::Payme, "nope")
        .await
        .expect("tx")
        .is_none());
}

async fn listing_filters_orders_and_pages(db: Db) {
    let (store, _dir) = open(db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let provider = if i % 2 == 0 {
            ProviderKind::Payme
        } else {
            ProviderKind::Click
        };
        let p = new_payment(
            if i < 3 { "A" } else { "B" },
            provider,
            1000 + i,
            t0() + Duration::seconds(i),
        );
        insert(store.as_ref(), &p).await;
        ids.push(p.id);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let all = store
        .list_payments(&PaymentQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    let got: Vec<_> = all.iter().map(|p| p.id.clone()).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first);

    let page1 = store
        .list_payments(&PaymentQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("page1");
    let page2 = store
        .list_payments(&PaymentQuery {
            limit: 2,
            starting_after: Some(page1[1].id.clone()),
            ..Default::default()
        })
        .await
        .expect("page2");
    assert_eq!(
        page1
            .iter()
            .chain(&page2)
            .map(|p| p.id.clone())
            .collect::<Vec<_>>(),
        newest_first[..4].to_vec()
    );

    let a = store
        .list_payments(&PaymentQuery {
            limit: 10,
            order_id: Some("A".into()),
            ..Default::default()
        })
        .await
        .expect("A");
    assert_eq!(a.len(), 3);
    let click = store
        .list_payments(&PaymentQuery {
            limit: 10,
            provider: Some(ProviderKind::Click),
            ..Default::default()
        })
        .await
        .expect("click");
    assert_eq!(click.len(), 2);
    let pending_b = store
        .list_payments(&PaymentQuery {
            limit: 10,
            order_id: Some("B".into()),
            status: Some(PaymentStatus::Pending),
            ..Default::default()
        })
        .await
        .expect("B");
    assert_eq!(pending_b.len(), 2);
    let none = store
        .list_payments(&PaymentQuery {
            limit: 10,
            status: Some(PaymentStatus::Succeeded),
            ..Default::default()
        })
        .await
        .expect("none");
    assert!(none.is_empty());
}

async fn counts_and_expired_open_payments(db: Db) {
    let (store, _dir) = open(db).await;
    let old = new_payment("o", ProviderKind::Payme, 100, t0() - Duration::hours(2));
    let fresh = new_payment("o", ProviderKind::Payme, 100, t0());
    let old_done = new_payment("o", ProviderKind::Payme, 100, t0() - Duration::hours(3));
    for p in [&old, &fresh, &old_done] {
        insert(store.as_ref(), p).await;
    }
    let done = store
        .get_payment(&old_done.id)
        .await
        .expect("get")
        .expect("exists");
    store
        .apply(
            &status_change(&done, PaymentStatus::Canceled, Actor::Merchant, None, t0())
                .expect("allowed"),
        )
        .await
        .expect("cancel");
    let expired = store
        .list_expired_open_payments(t0(), None, 10)
        .await
        .expect("expired");
    assert_eq!(
        expired.iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        vec![old.id.clone()]
    );
    let mut counts = store.count_payments_by_status().await.expect("counts");
    counts.sort_by_key(|(s, _)| s.as_str());
    assert_eq!(
        counts,
        vec![(PaymentStatus::Canceled, 1), (PaymentStatus::Pending, 2)]
    );
}

async fn status_change_is_compare_and_set(db: Db) {
    let (store, _dir) = open(db).await;
    let p = new_payment("o", ProviderKind::Click, 500, t0());
    let stale = insert(store.as_ref(), &p).await;
    let change = status_change(
        &stale,
        PaymentStatus::Processing,
        Actor::Provider,
        Some("prepare".into()),
        t0(),
    )
    .expect("allowed");
    store.apply(&change).await.expect("first apply");
    let now = store
        .get_payment(&p.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(now.status, PaymentStatus::Processing);
    assert_eq!(now.version, 1);
    // The same change built from the stale read must not apply twice.
    assert!(matches!(
        store.apply(&change).await,
        Err(StoreError::Conflict("payment"))
    ));
    let racing = status_change(&stale, PaymentStatus::Canceled, Actor::Merchant, None, t0())
        .expect("allowed");
    assert!(matches!(
        store.apply(&racing).await,
        Err(StoreError::Conflict("payment"))
    ));
    let after = store
        .get_payment(&p.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after, now);
    let events = store.list_events(&p.id).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
        ["payment.created", "payment.processing"]
    );
    assert_eq!(events[1].from_status, Some(PaymentStatus::Pending));
    assert_eq!(events[1].actor, Actor::Provider);
    assert_eq!(events[1].reason.as_deref(), Some("prepare"));
}

async fn failed_change_writes_nothing(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Payme, 500, t0()),
    )
    .await;
    let first = transaction(&p, "payme-1", 1_000);
    store
        .apply(&Change {
            insert_transaction: Some(first),
            ..Change::default()
        })
        .await
        .expect("insert tx");
    // A status change bundled with a duplicate transaction must roll back entirely.
    let mut change =
        status_change(&p, PaymentStatus::Processing, Actor::Provider, None, t0()).expect("allowed");
    change.insert_transaction = Some(transaction(&p, "payme-1", 2_000));
    let err = store.apply(&change).await.expect_err("duplicate");
    assert!(
        matches!(err, StoreError::Duplicate(ref c) if c == "transactions_provider_external_id_key"),
        "{err:?}"
    );
    let after = store
        .get_payment(&p.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(after.status, PaymentStatus::Pending);
    assert_eq!(after.version, 0);
    assert_eq!(store.list_events(&p.id).await.expect("events").len(), 1);
    assert_eq!(store.list_transactions(&p.id).await.expect("txs").len(), 1);
}

async fn transactions_are_unique_per_provider_and_versioned(db: Db) {
    let (store, _dir) = open(db).await;
    let payme = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Payme, 500, t0()),
    )
    .await;
    let click = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Click, 500, t0()),
    )
    .await;
    let a = transaction(&payme, "same-id", 3_000);
    let b = transaction(&payme, "other", 1_000);
    let c = transaction(&click, "same-id", 2_000);
    for t in [&a, &b, &c] {
        store
            .apply(&Change {
                insert_transaction: Some(t.clone()),
                ..Change::default()
            })
            .await
            .expect("insert");
    }
    let got = store
        .get_transaction(ProviderKind::Payme, "same-id")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got, a);
    let by_time = store
        .list_transactions_by_provider_time(ProviderKind::Payme, 1_000, 3_000)
        .await
        .expect("range");
    assert_eq!(
        by_time
            .iter()
            .map(|t| t.external_id.as_str())
            .collect::<Vec<_>>(),
        ["other", "same-id"]
    );
    let narrow = store
        .list_transactions_by_provider_time(ProviderKind::Payme, 1_001, 2_999)
        .await
        .expect("range");
    assert!(narrow.is_empty());

    let update = TransactionUpdate {
        id: a.id.clone(),
        expected_version: 0,
        state: "2".into(),
        perform_time: Some(4_000),
        cancel_time: None,
        reason: None,
        masked_card: Some("8600 **** **** 1234".into()),
        raw_status: Some("ok".into()),
        data: json!({"fiscal": true}),
        now: t0(),
    };
    store
        .apply(&Change {
            update_transaction: Some(update.clone()),
            ..Change::default()
        })
        .await
        .expect("update");
    assert!(matches!(
        store
            .apply(&Change {
                update_transaction: Some(update),
                ..Change::default()
            })
            .await,
        Err(StoreError::Conflict("transaction"))
    ));
    let got = store
        .get_transaction(ProviderKind::Payme, "same-id")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (got.state.as_str(), got.perform_time, got.version),
        ("2", Some(4_000), 1)
    );
    assert_eq!(got.masked_card.as_deref(), Some("8600 **** **** 1234"));
    assert_eq!(got.data, json!({"fiscal": true}));
}

async fn refunds_settle_once(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Epay, 10_000, t0()),
    )
    .await;
    let unpaid = Refund {
        id: RefundId::generate(),
        payment_id: p.id.clone(),
        amount_minor: 1,
        status: RefundStatus::Pending,
        external_id: None,
        reason: None,
        created_at: t0(),
        updated_at: t0(),
    };
    let err = store
        .apply(&Change {
            insert_refund: Some(unpaid),
            ..Change::default()
        })
        .await
        .expect_err("unpaid");
    assert!(matches!(err, StoreError::Conflict("payment")), "{err:?}");
    store
        .apply(
            &status_change(&p, PaymentStatus::Succeeded, Actor::Provider, None, t0())
                .expect("allowed"),
        )
        .await
        .expect("paid");
    let refund = Refund {
        id: RefundId::generate(),
        payment_id: p.id.clone(),
        amount_minor: 2_500,
        status: RefundStatus::Pending,
        external_id: None,
        reason: Some("damaged".into()),
        created_at: t0(),
        updated_at: t0(),
    };
    store
        .apply(&Change {
            insert_refund: Some(refund.clone()),
            ..Change::default()
        })
        .await
        .expect("insert");
    assert_eq!(
        store.list_refunds(&p.id).await.expect("list"),
        vec![refund.clone()]
    );
    let settle = Change {
        update_refund: Some((
            refund.id.clone(),
            RefundStatus::Succeeded,
            Some("ext-9".into()),
            t0(),
        )),
        ..Change::default()
    };
    store.apply(&settle).await.expect("settle");
    assert!(matches!(
        store.apply(&settle).await,
        Err(StoreError::Conflict("refund"))
    ));
    let got = &store.list_refunds(&p.id).await.expect("list")[0];
    assert_eq!(got.status, RefundStatus::Succeeded);
    assert_eq!(got.external_id.as_deref(), Some("ext-9"));
    // 7 500 remain: a refund of 7 501 is refused, 7 500 fits, then nothing more.
    let more = |amount| Refund {
        id: RefundId::generate(),
        amount_minor: amount,
        ..refund.clone()
    };
    let err = store
        .apply(&Change {
            insert_refund: Some(more(7_501)),
            ..Change::default()
        })
        .await
        .expect_err("too much");
    assert!(
        matches!(err, StoreError::LimitExceeded("refund")),
        "{err:?}"
    );
    store
        .apply(&Change {
            insert_refund: Some(more(7_500)),
            ..Change::default()
        })
        .await
        .expect("fits");
    let err = store
        .apply(&Change {
            insert_refund: Some(more(1)),
            ..Change::default()
        })
        .await
        .expect_err("exhausted");
    assert!(
        matches!(err, StoreError::LimitExceeded("refund")),
        "{err:?}"
    );
    assert_eq!(store.list_refunds(&p.id).await.expect("list").len(), 2);
}

fn idem(scope: &str, key: &str, hash: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: scope.into(),
        key: key.into(),
        request_hash: hash.into(),
        payment_id: None,
        response_status: None,
        response_body: None,
        created_at: t0(),
    }
}

async fn idempotency_keys_claim_complete_delete(db: Db) {
    let (store, _dir) = open(db).await;
    assert!(store
        .claim_idempotency_key(&idem("s", "k", "h1"))
        .await
        .expect("claim"));
    assert!(!store
        .claim_idempotency_key(&idem("s", "k", "h2"))
        .await
        .expect("claim again"));
    assert!(store
        .claim_idempotency_key(&idem("other-scope", "k", "h3"))
        .await
        .expect("other scope"));
    let got = store
        .get_idempotency_key("s", "k")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got, idem("s", "k", "h1"));
    store
        .complete_idempotency_key("s", "k", 201, "{\"a\":1}")
        .await
        .expect("complete");
    assert!(matches!(
        store.complete_idempotency_key("s", "k", 500, "x").await,
        Err(StoreError::Conflict(_))
    ));
    // A completed key is kept: delete only frees keys whose request never finished.
    store
        .delete_idempotency_key("s", "k")
        .await
        .expect("delete");
    let got = store
        .get_idempotency_key("s", "k")
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(
        (got.response_status, got.response_body.as_deref()),
        (Some(201), Some("{\"a\":1}"))
    );
    store
        .delete_idempotency_key("other-scope", "k")
        .await
        .expect("delete");
    assert!(store
        .get_idempotency_key("other-scope", "k")
        .await
        .expect("get")
        .is_none());
    assert!(store
        .get_idempotency_key("s", "missing")
        .await
        .expect("get")
        .is_none());
}

async fn payment_creation_claims_its_idempotency_key_atomically(db: Db) {
    let (store, _dir) = open(db).await;
    let first = new_payment("o", ProviderKind::Payme, 100, t0());
    let mut record = idem("s", "key-1", "h");
    record.response_status = Some(201);
    record.response_body = Some("{}".into());
    store
        .create_payment(
            &first,
            &NewEvent::created(&first, Actor::Merchant),
            Some(&record),
        )
        .await
        .expect("create");
    let second = new_payment("o", ProviderKind::Payme, 100, t0());
    let err = store
        .create_payment(
            &second,
            &NewEvent::created(&second, Actor::Merchant),
            Some(&record),
        )
        .await
        .expect_err("key taken");
    assert!(
        matches!(err, StoreError::Duplicate(ref c) if c == "idempotency_keys"),
        "{err:?}"
    );
    assert!(
        store.get_payment(&second.id).await.expect("get").is_none(),
        "no payment without its key"
    );
    let got = store
        .get_idempotency_key("s", "key-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.payment_id, Some(first.id.clone()));
    assert_eq!(got.response_status, Some(201));
}

async fn settings_survive_and_overwrite(db: Db) {
    let (url, _dir) = fresh_database(db).await;
    let settings = test_settings(url);
    {
        let store = tolov::store::connect(&settings.database)
            .await
            .expect("connect");
        assert_eq!(store.get_setting("payme.key").await.expect("get"), None);
        store
            .put_setting("payme.key", "v1", t0())
            .await
            .expect("put");
        store
            .put_setting("payme.key", "v2", t0())
            .await
            .expect("overwrite");
    }
    // A new connection (a restart) sees the value; migrations re-run harmlessly.
    let store = tolov::store::connect(&settings.database)
        .await
        .expect("reconnect");
    assert_eq!(
        store
            .get_setting("payme.key")
            .await
            .expect("get")
            .as_deref(),
        Some("v2")
    );
}

async fn twenty_concurrent_changes_apply_once(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Payme, 500, t0()),
    )
    .await;
    let results = join_all((0..20).map(|i| {
        let store = store.clone();
        let mut change = status_change(&p, PaymentStatus::Processing, Actor::Provider, None, t0())
            .expect("allowed");
        change.insert_transaction = Some(transaction(&p, &format!("attempt-{i}"), i));
        async move { store.apply(&change).await }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict("payment"))))
        .count();
    assert_eq!((ok, conflicts), (1, 19), "{results:?}");
    assert_eq!(store.list_transactions(&p.id).await.expect("txs").len(), 1);
    assert_eq!(store.list_events(&p.id).await.expect("events").len(), 2);
    assert_eq!(
        store
            .get_payment(&p.id)
            .await
            .expect("get")
            .expect("exists")
            .version,
        1
    );
}

async fn twenty_concurrent_transaction_inserts_keep_one(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Click, 500, t0()),
    )
    .await;
    let results = join_all((0..20).map(|_| {
        let store = store.clone();
        let t = transaction(&p, "click-777", 1);
        async move {
            store
                .apply(&Change {
                    insert_transaction: Some(t),
                    ..Change::default()
                })
                .await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let dup = results
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Duplicate(_))))
        .count();
    assert_eq!((ok, dup), (1, 19), "{results:?}");
    assert_eq!(store.list_transactions(&p.id).await.expect("txs").len(), 1);
}

async fn ping_answers(db: Db) {
    let (store, _dir) = open(db).await;
    store.ping().await.expect("ping");
    let expected = match db {
        Db::Sqlite => tolov::store::Backend::Sqlite,
        Db::Postgres => tolov::store::Backend::Postgres,
    };
    assert_eq!(store.backend(), expected);
}

/// Every row of a keyset-paged list read two at a time: `read(after)` lists the rows after
/// `after`, the last row of the previous page.
async fn all_pages<T: Clone>(mut read: impl AsyncFnMut(Option<T>) -> Vec<T>) -> Vec<T> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = read(after.clone()).await;
        let full = page.len() == 2;
        after = page.last().cloned();
        all.extend(page);
        if !full {
            return all;
        }
    }
}

/// The workers' keyset pages: every due payment exactly once, in order, also when several share
/// one deadline (the id breaks the tie), and nothing after the last page.
async fn due_payments_are_read_page_after_page(db: Db) {
    let (store, _dir) = open(db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        // Three share a creation time (so a deadline), two are older.
        let created = t0() - Duration::hours(if i < 3 { 1 } else { 2 });
        let p = new_payment("o", ProviderKind::Click, 100, created);
        ids.push((created, p.id.clone()));
        insert(store.as_ref(), &p).await;
    }
    ids.sort();
    let expired = all_pages(async |after: Option<Payment>| {
        store
            .list_expired_open_payments(t0(), after.as_ref(), 2)
            .await
            .expect("page")
    })
    .await;
    let expired: Vec<_> = expired.into_iter().map(|p| p.id).collect();
    let want: Vec<_> = ids.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(expired, want);

    // The same for reconciliation's stale `processing` payments, by last change.
    let mut stale = Vec::new();
    for id in &want {
        let p = store.get_payment(id).await.expect("get").expect("exists");
        let change = status_change(&p, PaymentStatus::Processing, Actor::Provider, None, t0())
            .expect("allowed");
        store.apply(&change).await.expect("processing");
    }
    let pages = all_pages(async |after: Option<Payment>| {
        store
            .list_stale_unsettled(t0() + Duration::seconds(1), after.as_ref(), 2)
            .await
            .expect("page")
    })
    .await;
    stale.extend(pages.into_iter().map(|p| p.id));
    let mut by_id = want.clone();
    by_id.sort();
    assert_eq!(stale, by_id, "one change time: in id order");

    // Pending payments too, at a provider whose payer pays on its own page (ePay), and only
    // there; never closed ones.
    let epay = insert(
        store.as_ref(),
        &NewPayment {
            expires_at: t0() + Duration::hours(2),
            ..new_payment("o", ProviderKind::Epay, 10_000, t0() - Duration::hours(3))
        },
    )
    .await;
    let click = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Click, 100, t0() - Duration::hours(3)),
    )
    .await;
    let closed = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Epay, 10_000, t0() - Duration::hours(3)),
    )
    .await;
    let change = status_change(
        &closed,
        PaymentStatus::Canceled,
        Actor::Merchant,
        None,
        t0() - Duration::hours(3),
    )
    .expect("allowed");
    store.apply(&change).await.expect("canceled");
    let listed: Vec<_> = all_pages(async |after: Option<Payment>| {
        store
            .list_stale_unsettled(t0() + Duration::seconds(1), after.as_ref(), 2)
            .await
            .expect("page")
    })
    .await
    .into_iter()
    .map(|p| p.id)
    .collect();
    assert_eq!(listed[0], epay.id, "the oldest change first: {listed:?}");
    let overdue = listed.len();
    // Past its deadline (by more than the staleness asked for) a pending one is expiry's.
    let listed_later = all_pages(async |after: Option<Payment>| {
        store
            .list_stale_unsettled(t0() + Duration::hours(3), after.as_ref(), 2)
            .await
            .expect("page")
    })
    .await;
    assert!(
        !listed_later.iter().any(|p| p.id == epay.id),
        "{listed_later:?}"
    );
    assert_eq!(listed_later.len(), overdue - 1);
    assert!(
        !listed.contains(&click.id) && !listed.contains(&closed.id),
        "{listed:?}"
    );
    assert_eq!(listed.len(), want.len() + 1);
}

/// Reconciliation's keyset pages of pending refunds: each stale pending refund once, oldest
/// change first (then id); settled and fresh ones are not listed.
async fn stale_pending_refunds_are_read_page_after_page(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o", ProviderKind::Epay, 10_000, t0()),
    )
    .await;
    store
        .apply(
            &status_change(&p, PaymentStatus::Succeeded, Actor::Provider, None, t0())
                .expect("allowed"),
        )
        .await
        .expect("paid");
    let mut stale = Vec::new();
    for (i, at) in [(0, 3), (1, 1), (2, 1), (3, 2), (4, 9)] {
        let refund = Refund {
            id: RefundId::generate(),
            payment_id: p.id.clone(),
            amount_minor: 100,
            status: RefundStatus::Pending,
            external_id: None,
            reason: None,
            created_at: t0() + Duration::minutes(at),
            updated_at: t0() + Duration::minutes(at),
        };
        store
            .apply(&Change {
                insert_refund: Some(refund.clone()),
                ..Change::default()
            })
            .await
            .expect("reserve");
        if i == 0 {
            store
                .apply(&Change {
                    update_refund: Some((refund.id.clone(), RefundStatus::Succeeded, None, t0())),
                    ..Change::default()
                })
                .await
                .expect("settled");
        } else if at < 5 {
            stale.push((refund.updated_at, refund.id.clone()));
        }
    }
    stale.sort();
    let got = all_pages(async |after: Option<Refund>| {
        store
            .list_stale_pending_refunds(t0() + Duration::minutes(5), after.as_ref(), 2)
            .await
            .expect("page")
    })
    .await;
    let got: Vec<_> = got.into_iter().map(|r| r.id).collect();
    assert_eq!(got, stale.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
}

/// A recheck is written with the change that schedules it (and not when that change fails), an
/// earlier one scheduled already stays, a due one is taken by one of twenty workers at once,
/// and finishing the version read leaves a newer one scheduled meanwhile.
async fn rechecks_are_scheduled_with_their_change_and_taken_once(db: Db) {
    let (store, _dir) = open(db).await;
    let p = insert(
        store.as_ref(),
        &new_payment("o-r", ProviderKind::Epay, 150_000, t0()),
    )
    .await;
    let recheck =
        |due: chrono::DateTime<Utc>, reason: &str, now: chrono::DateTime<Utc>| NewRecheck {
            payment_id: p.id.clone(),
            due_at: due,
            reason: reason.to_owned(),
            now,
        };
    // Closing the payment schedules it; a refused change schedules nothing.
    let mut stale =
        status_change(&p, PaymentStatus::Canceled, Actor::Merchant, None, t0()).expect("cancel");
    stale.recheck = Some(recheck(t0() + Duration::hours(3), "close", t0()));
    let mut stale_version = stale.clone();
    if let Some(u) = stale_version.payment.as_mut() {
        u.expected_version += 7;
    }
    assert!(matches!(
        store.apply(&stale_version).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store
        .due_rechecks(t0() + Duration::days(1), 10)
        .await
        .expect("due")
        .is_empty());
    store.apply(&stale).await.expect("cancel");
    assert!(store
        .due_rechecks(t0() + Duration::hours(2), 10)
        .await
        .expect("due")
        .is_empty());
    // A later schedule keeps the earlier time; an earlier one moves it forward.
    let later = Change {
        recheck: Some(recheck(
            t0() + Duration::hours(5),
            "later",
            t0() + Duration::seconds(1),
        )),
        ..Change::default()
    };
    store.apply(&later).await.expect("later");
    let due = store
        .due_rechecks(t0() + Duration::hours(4), 10)
        .await
        .expect("due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].due_at, t0() + Duration::hours(3));
    assert_eq!((due[0].attempts, due[0].reason.as_str()), (0, "later"));
    let earlier = Change {
        recheck: Some(recheck(
            t0() + Duration::hours(1),
            "earlier",
            t0() + Duration::seconds(2),
        )),
        ..Change::default()
    };
    store.apply(&earlier).await.expect("earlier");
    let now = t0() + Duration::hours(4);
    let due = store.due_rechecks(now, 10).await.expect("due");
    assert_eq!(due[0].due_at, t0() + Duration::hours(1));

    // Twenty workers take it at once: one does.
    let taken = join_all((0..20).map(|_| {
        let store = store.clone();
        let seen = due[0].clone();
        async move {
            store
                .postpone_recheck(&seen, now + Duration::minutes(10), now, true)
                .await
                .expect("postpone")
        }
    }))
    .await;
    let winners: Vec<Recheck> = taken.into_iter().flatten().collect();
    assert_eq!(winners.len(), 1);
    let mine = winners[0].clone();
    assert_eq!(
        (mine.attempts, mine.due_at),
        (1, now + Duration::minutes(10))
    );
    assert!(
        store.due_rechecks(now, 10).await.expect("due").is_empty(),
        "taken"
    );

    // Rescheduled while the worker was asking: finishing the taken version keeps it.
    store
        .apply(&Change {
            recheck: Some(recheck(now + Duration::minutes(5), "again", now)),
            ..Change::default()
        })
        .await
        .expect("again");
    store.finish_recheck(&mine).await.expect("finish");
    let left = store
        .due_rechecks(now + Duration::minutes(5), 10)
        .await
        .expect("due");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reason, "again");
    store.finish_recheck(&left[0]).await.expect("finish");
    assert!(store
        .due_rechecks(now + Duration::days(1), 10)
        .await
        .expect("due")
        .is_empty());
}

/// Runs one statement on the backend's own connection; `Err` carries the database's error kind.
async fn execute_raw(db: Db, url: &str, sql: &str) -> Result<(), Option<sqlx::error::ErrorKind>> {
    use sqlx::Connection;
    let outcome = match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("connect");
            sqlx::query(sql).execute(&mut c).await.map(drop)
        }
        Db::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(sql).execute(&mut c).await.map(drop)
        }
    };
    outcome.map_err(|e| e.as_database_error().map(|d| d.kind()))
}

/// The closed sets (provider, currency, status, language, refund and delivery status) and the
/// positive amounts hold in the database itself, whatever writes to it: each value outside its set
/// is a check violation, and the same statement with a value inside the set goes through.
async fn the_schema_refuses_values_outside_their_sets(db: Db) {
    let (url, _dir) = fresh_database(db).await;
    let store = tolov::store::connect(&test_settings(url.clone()).database)
        .await
        .expect("connect + migrate");
    let p = insert(
        store.as_ref(),
        &new_payment("o-1", ProviderKind::Payme, 5_000, t0()),
    )
    .await;
    let id = p.id.as_str();
    let refund = |amount: &str, status: &str| {
        format!("INSERT INTO refunds (id, payment_id, amount_minor, status, created_at, updated_at) VALUES ('re_{amount}_{status}', '{id}', {amount}, '{status}', 0, 0)")
    };
    let outbox = |status: &str| {
        format!("INSERT INTO webhook_outbox (event_id, payment_id, event_type, payload, status, next_attempt_at, created_at, updated_at) VALUES ('evt_{status}', '{id}', 'payment.succeeded', '{{}}', '{status}', 0, 0, 0)")
    };
    let set = |assignment: &str| format!("UPDATE payments SET {assignment} WHERE id = '{id}'");
    // (refused, the same statement with an allowed value)
    let cases = [
        (set("provider = 'stripe'"), set("provider = 'click'")),
        (set("amount_minor = 0"), set("amount_minor = 1")),
        (set("amount_minor = -5"), set("amount_minor = 2")),
        (set("currency = 'USD'"), set("currency = 'KZT'")),
        (set("status = 'paid'"), set("status = 'expired'")),
        (set("language = 'de'"), set("language = 'en'")),
        (refund("100", "done"), refund("100", "pending")),
        (refund("0", "pending"), refund("1", "pending")),
        (outbox("sent"), outbox("dead")),
    ];
    for (refused, allowed) in &cases {
        assert_eq!(
            execute_raw(db, &url, refused).await,
            Err(Some(sqlx::error::ErrorKind::CheckViolation)),
            "{refused}"
        );
        assert_eq!(execute_raw(db, &url, allowed).await, Ok(()), "{allowed}");
    }
}

/// The workers end a pass when PostgreSQL refuses the connection itself (here: a login it does
/// not know, SQLSTATE 28000), as when it is unreachable; a refused row is not that.
#[tokio::test]
async fn a_login_postgresql_refuses_makes_the_store_unavailable() {
    use sqlx::Connection;
    let url = crate::helpers::postgres_admin_url();
    let (scheme, rest) = url.split_once("://").expect("url");
    let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    let refused = sqlx::PgConnection::connect(&format!("{scheme}://no_such_role_tolov@{host}"))
        .await
        .expect_err("an unknown role");
    assert!(
        tolov::store::StoreError::from(refused).is_unavailable(),
        "a refused login means the database cannot be used"
    );
}

/// Retention deletes delivered messages created before the cutoff, oldest first and in
/// batches; undelivered (pending, dead) and younger ones stay.
async fn old_delivered_messages_are_pruned_and_nothing_else(db: Db) {
    let (url, _dir) = fresh_database(db).await;
    let store = tolov::store::connect(&test_settings(url.clone()).database)
        .await
        .expect("connect + migrate");
    let cutoff = t0();
    let at = |days: i64| (cutoff + Duration::days(days)).timestamp_millis();
    let rows = [
        ("old-1", "delivered", at(-40)),
        ("old-pending", "pending", at(-39)),
        ("old-2", "delivered", at(-38)),
        ("old-dead", "dead", at(-37)),
        ("old-3", "delivered", at(-36)),
        ("young", "delivered", at(-1)),
        ("young-pending", "pending", at(0)),
    ];
    for (event, status, created) in rows {
        let sql = format!(
            "INSERT INTO webhook_outbox (event_id, payment_id, event_type, payload, status, next_attempt_at, created_at, updated_at) \
             VALUES ('evt_{event}', 'pay_x', 'payment.succeeded', '{{}}', '{status}', 0, {created}, {created})"
        );
        assert_eq!(execute_raw(db, &url, &sql).await, Ok(()), "{sql}");
    }
    let cutoff = cutoff - Duration::days(30);
    assert_eq!(
        store
            .prune_delivered_outbox(cutoff, 2)
            .await
            .expect("prune"),
        2
    );
    assert_eq!(
        store
            .prune_delivered_outbox(cutoff, 2)
            .await
            .expect("prune"),
        1
    );
    assert_eq!(
        store
            .prune_delivered_outbox(cutoff, 2)
            .await
            .expect("prune"),
        0
    );
    let left: Vec<String> = store
        .list_outbox(None, 0, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.event_id)
        .collect();
    assert_eq!(
        left,
        [
            "evt_old-pending",
            "evt_old-dead",
            "evt_young",
            "evt_young-pending"
        ]
    );
}
