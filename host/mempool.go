package host

import (
	"fmt"
	"time"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// mempool holds signed txs waiting for the gateway to carry them: this
// host's own, and peers' txs it received by gossip.
type mempool struct {
	byKey map[string]*pooled
	order []string // insertion order, for a stable reply
	now   func() time.Time
}

type pooled struct {
	tx    *sessionpb.Tx
	since uint64    // the session nonce when the tx entered the pool
	at    time.Time // when it entered, by the host's clock
	own   bool
}

// newMempool returns an empty pool that stamps entries with now.
func newMempool(now func() time.Time) *mempool {
	return &mempool{byKey: map[string]*pooled{}, now: now}
}

// add keeps tx unless an equivalent tx is already pooled.
func (m *mempool) add(tx *sessionpb.Tx, since uint64, own bool) bool {
	key := session.TxKey(tx)
	if _, ok := m.byKey[key]; ok {
		return false
	}
	m.byKey[key] = &pooled{tx: tx, since: since, at: m.now(), own: own}
	m.order = append(m.order, key)
	return true
}

func (m *mempool) remove(key string) { delete(m.byKey, key) }

// txs lists the pooled txs in the order they arrived.
func (m *mempool) txs() []*sessionpb.Tx {
	out := make([]*sessionpb.Tx, 0, len(m.byKey))
	live := m.order[:0]
	for _, k := range m.order {
		if p, ok := m.byKey[k]; ok {
			out = append(out, p.tx)
			live = append(live, k)
		}
	}
	m.order = live
	return out
}

// prune drops txs the session can no longer take: their record was sealed,
// or it moved past the status the tx needs.
func (m *mempool) prune(s *session.Session) {
	for k, p := range m.byKey {
		if !s.MayInclude(p.tx) {
			delete(m.byKey, k)
		}
	}
}

// overdue explains why the host must withhold its signature from the state
// at nonce: a pooled tx that still waits there (pending reports which do)
// has waited more than grace nonces in this pool for the gateway to include
// it. Gossiped txs count as much as the host's own: they were verified on
// arrival, so a gateway that censors one member loses the signatures of
// every member its txs reached. It returns "" when nothing is overdue.
func (m *mempool) overdue(nonce, grace uint64, pending func(key string, tx *sessionpb.Tx) bool) string {
	p := m.late(nonce, grace, false, pending)
	if p == nil {
		return ""
	}
	if p.own {
		return fmt.Sprintf("withholding signatures: own tx for inference %d (slot %d) has waited %d nonces for inclusion, more than the grace of %d",
			txID(p.tx), p.tx.Slot, nonce-p.since, grace)
	}
	return fmt.Sprintf("withholding signatures: slot %d's %s for inference %d, taken by gossip, has waited %d nonces here for inclusion, more than the grace of %d",
		p.tx.Slot, txKind(p.tx), txID(p.tx), nonce-p.since, grace)
}

// overdueOwn explains why the host, as executor, refuses to run new
// inferences at nonce: one of its own txs that still waits has waited more
// than grace nonces. Work the gateway does not carry is not paid, so the
// host stops working for it until its txs are in. It returns "" when
// nothing is overdue.
func (m *mempool) overdueOwn(nonce, grace uint64, pending func(key string, tx *sessionpb.Tx) bool) string {
	p := m.late(nonce, grace, true, pending)
	if p == nil {
		return ""
	}
	return fmt.Sprintf("this host's own %s for inference %d (slot %d) has waited %d nonces for inclusion, more than the grace of %d; it runs new inferences once the gateway carries it",
		txKind(p.tx), txID(p.tx), p.tx.Slot, nonce-p.since, grace)
}

// late is the first pooled tx, of this host's own only if ownOnly, that
// still waits and has waited more than grace nonces at nonce, or nil.
func (m *mempool) late(nonce, grace uint64, ownOnly bool, pending func(key string, tx *sessionpb.Tx) bool) *pooled {
	for _, k := range m.order {
		p, ok := m.byKey[k]
		if !ok || (ownOnly && !p.own) || nonce-p.since <= grace || !pending(k, p.tx) {
			continue
		}
		return p
	}
	return nil
}

// holdsWork reports whether the pool holds a ConfirmStart or
// FinishInference of the executor (isExec says which slots are its) that
// the next diff could carry on its own (applies), and that counts. For the
// inference in question any such tx counts: it is the executor's proof, a
// confirm while it is PENDING, a finish once STARTED (a finish alone cannot
// be carried before its confirm). For another inference only a stale one
// counts (stale: it waited here past half the seal grace or half the
// execution timeout): that shows the gateway sitting on the executor's
// work, which the executor answers by refusing new inferences
// (Engine.Inference), while a fresh one is the ordinary lag before the next
// diff and must not keep a crashed executor's lost inference from timing
// out. Either way a host holding such a tx does not vote it out.
func (m *mempool) holdsWork(id uint64, isExec func(slot uint32) bool, applies func(tx *sessionpb.Tx) bool, stale func(p *pooled) bool) bool {
	for _, p := range m.byKey {
		if (p.tx.GetConfirm() != nil || p.tx.GetFinish() != nil) && isExec(p.tx.Slot) && (txID(p.tx) == id || stale(p)) && applies(p.tx) {
			return true
		}
	}
	return false
}

// withdrawTimeouts drops this host's own pooled timeout votes on inference
// id: they were cast before the executor's proof reached the pool.
func (m *mempool) withdrawTimeouts(id uint64) {
	for k, p := range m.byKey {
		if p.own && p.tx.GetTimeout() != nil && txID(p.tx) == id {
			delete(m.byKey, k)
		}
	}
}

func txID(tx *sessionpb.Tx) uint64 {
	switch b := tx.Body.(type) {
	case *sessionpb.Tx_Confirm:
		return b.Confirm.InferenceId
	case *sessionpb.Tx_Finish:
		return b.Finish.InferenceId
	case *sessionpb.Tx_Validation:
		return b.Validation.InferenceId
	case *sessionpb.Tx_Timeout:
		return b.Timeout.InferenceId
	}
	return 0
}
