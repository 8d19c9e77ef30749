package gateway

import (
	"fmt"
	"sync"

	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// pooled is a verified host tx waiting to be carried, and the member that
// sent it first.
type pooled struct {
	tx   *sessionpb.Tx
	key  string // session.TxEffectKey
	from int
}

// maxPendingPerHost bounds the txs one member may have waiting to be
// carried: a quarter of what one diff carries, so no member can fill a
// diff, and a few together cannot keep the others' txs out for long. A tx
// over the cap is dropped and counted; an honest host answers every diff
// with its whole mempool, so one it dropped comes back once the pool has
// room. Honest hosts stay far below it: their txs are carried by the next
// diff.
const maxPendingPerHost = session.MaxTxsPerDiff / 4

// errPendingCap is a tx dropped because its member has maxPendingPerHost
// txs waiting.
var errPendingCap = fmt.Errorf("the host has %d txs waiting to be carried, the most one host may", maxPendingPerHost)

// intake takes the txs the members answer (their mempools) and keeps the
// verified ones, one per effect, until the sequencer moves them into its
// pool (drainInto). It counts each member's txs waiting, in the inbox or
// in the sequencer's pool, against maxPendingPerHost, until the
// sequencer releases them.
//
// mu guards inbox, known and waiting. admit is called from the delivery
// goroutines without any lock; drainInto and release under the
// sequencer's mu, which is taken before this one.
type intake struct {
	snap    *sessionpb.EscrowSnapshot
	auth    session.Authorizer
	memo    *signing.Memo
	metrics *Metrics
	hosts   []string // member index -> its address, as the metrics name it
	slots   []string // slot -> its holder's address, as the metrics name it

	mu      sync.Mutex
	inbox   []*pooled       // verified txs, not yet in the sequencer's pool
	known   map[string]bool // effect keys in inbox or the sequencer's pool
	waiting []int           // member index -> its txs in inbox or the pool
}

// newIntake takes txs for snap's escrow from members; auth and memo
// verify their signatures.
func newIntake(snap *sessionpb.EscrowSnapshot, members []*member, auth session.Authorizer, memo *signing.Memo, metrics *Metrics) *intake {
	hosts := make([]string, len(members))
	slots := make([]string, len(snap.Group))
	for i, m := range members {
		hosts[i] = m.addr.String()
		for _, s := range m.slots {
			if int(s) < len(slots) {
				slots[s] = hosts[i]
			}
		}
	}
	return &intake{snap: snap, auth: auth, memo: memo, metrics: metrics, hosts: hosts, slots: slots,
		known: map[string]bool{}, waiting: make([]int, len(members))}
}

// admit takes the txs member i answered: each is decoded (canonical
// bytes only), verified (its slot's holder signed it) and queued for the
// next build, where the state check follows (drainInto). A tx that fails,
// or that would put the member over maxPendingPerHost, is dropped and
// counted against the member. A tx already waiting is not verified again,
// since hosts answer their whole mempool every time. Verification goes
// through the gateway's memo, so building the diff that carries a tx
// costs a hash.
func (in *intake) admit(i int, raws [][]byte) {
	if len(raws) == 0 {
		return
	}
	host := in.hosts[i]
	fresh := make([]*pooled, 0, len(raws))
	seen := make(map[string]bool, len(raws))
	in.mu.Lock()
	for _, raw := range raws {
		tx, err := session.DecodeTx(raw)
		if err != nil {
			in.metrics.droppedTx(host, err)
			continue
		}
		if k := session.TxEffectKey(tx); !in.known[k] && !seen[k] {
			seen[k] = true
			fresh = append(fresh, &pooled{tx: tx, key: k, from: i})
		}
	}
	in.mu.Unlock()
	ok := fresh[:0]
	for _, p := range fresh {
		if err := session.VerifyHostTxWith(in.snap, p.tx, in.auth, in.memo); err != nil {
			in.metrics.droppedTx(host, err)
			continue
		}
		ok = append(ok, p)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, p := range ok {
		switch {
		case in.known[p.key]: // another member sent it meanwhile
		case in.waiting[i] >= maxPendingPerHost:
			in.metrics.droppedTx(host, errPendingCap)
		default:
			in.known[p.key] = true
			in.waiting[i]++
			in.inbox = append(in.inbox, p)
		}
	}
}

// includer is the state a pooled tx must still apply to.
type includer interface {
	MayInclude(tx *sessionpb.Tx) bool
}

// drainInto moves the inbox into pool, less the txs st no longer takes
// (carried meanwhile, or never applicable), whose places are released.
// Call with the lock that guards pool and st held (the sequencer's mu).
func (in *intake) drainInto(pool map[string]*pooled, st includer) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, p := range in.inbox {
		if st.MayInclude(p.tx) {
			pool[p.key] = p
		} else {
			in.releaseLocked(p)
		}
	}
	clear(in.inbox)
	in.inbox = in.inbox[:0]
}

// release frees p's place: it was carried, or dropped from the pool.
func (in *intake) release(p *pooled) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.releaseLocked(p)
}

func (in *intake) releaseLocked(p *pooled) {
	delete(in.known, p.key)
	in.waiting[p.from]--
}
