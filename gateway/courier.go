package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/session/sessionpb"
	"github.com/devshard/devshard/signing"
)

// member is one distinct participant of an escrow's group.
type member struct {
	addr  signing.Address
	url   string
	slots []uint32
	out   outbox
}

// resolveMembers lists the distinct accounts of snap's group, in order of
// their first slot, with the slots each holds and the URL it serves the
// escrow's sessions at: its registered URL, routed to the escrow's runtime
// version. Every call about the escrow goes there.
func resolveMembers(ctx context.Context, chain Chain, snap *sessionpb.EscrowSnapshot) ([]*member, error) {
	var members []*member
	byAddr := map[signing.Address]*member{}
	for slot, raw := range snap.Group {
		a, err := signing.AddressFromBytes(raw)
		if err != nil {
			return nil, err
		}
		m, ok := byAddr[a]
		if !ok {
			url, err := chain.HostURL(ctx, a)
			if err != nil {
				return nil, err
			}
			m = &member{addr: a, url: hostapi.RuntimeURL(url, snap.RuntimeVersion)}
			byAddr[a] = m
			members = append(members, m)
		}
		m.slots = append(m.slots, uint32(slot))
	}
	return members, nil
}

// outbox is a member's queue of diffs to deliver, in nonce order. One
// goroutine drains it while it is not empty, sending everything queued as
// one run, so a member sees nonces in order while the members are served
// independently of each other.
//
// Diffs the member does not execute are held (Config.HoldFor): they go
// out with the next diff it executes, or when maxHeld are waiting, or
// when the hold ends, so that the member stores and signs several nonces
// in one commit. Every process of the network shares the machine's cores:
// each commit, signature and round trip a member saves is time the
// executor of the current request gets.
type outbox struct {
	mu       sync.Mutex
	queue    []*delivery
	running  bool
	urgentTo uint64      // queued diffs up to this nonce go out now
	hold     *time.Timer // armed while held diffs wait
}

// ready reports whether the queue goes out now, with at most held diffs
// held. Call with mu held.
func (o *outbox) ready(held int) bool {
	return len(o.queue) > 0 && (o.queue[0].nonce <= o.urgentTo || len(o.queue) >= held)
}

// maxHeld is how many diffs may wait for a member before they go out.
const maxHeld = 16

// holdFor is how long diffs may wait for a member of snap's escrow: hold
// (Config.HoldFor), and at most a quarter of the seal grace's seconds.
func holdFor(snap *sessionpb.EscrowSnapshot, hold time.Duration) time.Duration {
	if g := snap.SealGraceSeconds; g > 0 {
		return min(hold, time.Duration(g)*time.Second/4)
	}
	return hold
}

// heldAtMost is how many diffs may wait for a member of snap's escrow:
// maxHeld, and at most a quarter of the seal grace, so that a member
// sampled to validate a finished inference sees it well before it seals.
func heldAtMost(snap *sessionpb.EscrowSnapshot) int {
	return int(max(min(maxHeld, snap.SealGraceNonces/4), 1))
}

// delivery is one diff on its way to every member.
type delivery struct {
	nonce uint64
	root  [32]byte
	raw   []byte
	reqs  map[uint64]executor.Request
	done  []chan error // per member, buffered: its outcome, nil once it took the diff

	encode  sync.Once // body is encoded once, for every member
	body    []byte
	bodyErr error
}

// encoded is d's request body, the same for every member.
func (d *delivery) encoded() ([]byte, error) {
	d.encode.Do(func() { d.body, d.bodyErr = hostapi.EncodeDiff(d.raw, d.reqs) })
	return d.body, d.bodyErr
}

// wait returns member i's outcome, or ctx's error first.
func (d *delivery) wait(ctx context.Context, i int) error {
	select {
	case err := <-d.done[i]:
		d.done[i] <- err // kept for another waiter
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// waitAll waits until every member answered, or ctx ends.
func (d *delivery) waitAll(ctx context.Context) {
	for i := range d.done {
		if d.wait(ctx, i) != nil && ctx.Err() != nil {
			return
		}
	}
}

// errSkipped answers a delivery to a member that is known to be down; it
// catches up on its first delivery after that.
var errSkipped = errors.New("host skipped while down")

// downFor is how long an unreachable host is skipped; it catches up on the
// first diff after that.
const downFor = 3 * time.Second

// storageDownFor is how long a host that answered that its storage is
// failing is skipped: shorter than downFor, because the host is up and
// takes diffs again as soon as its storage is back, and a request that
// finds every member skipped fails without spending a nonce.
const storageDownFor = 2 * time.Second

// maxRunBytes bounds the body of one delivery, well under the host's
// limit (hostapi.MaxBody): a longer run goes out in parts.
const maxRunBytes = hostapi.MaxBody / 4

// courier delivers one escrow's diffs to the members of its group, each
// member's in nonce order and independently of the others (outbox). It
// keeps what it learned of each member: the highest nonce it accepted,
// and whether it is down. A member's answer to a diff goes on to the
// signature collector (its state signatures) and the intake (its
// mempool).
//
// mu guards acked, down and failed; each outbox has its own mu. Neither is held
// while calling out of the courier.
type courier struct {
	escrow  uint64
	members []*member // fixed at construction
	peers   *hostapi.Client
	state   *State // the diffs a member that fell behind missed
	sigs    *signatures
	in      *intake
	log     *slog.Logger
	// ctx bounds every delivery: deliveries outlive the request that
	// sequenced their diff and end when the gateway halts.
	ctx         context.Context
	hostTimeout time.Duration
	holdFor     time.Duration // how long a held diff may wait
	held        int           // how many held diffs may wait
	noHold      bool          // every diff goes out at once (Config.HoldFor < 0)

	mu    sync.Mutex
	acked []uint64    // member index -> highest nonce it accepted
	down  []time.Time // member index -> not tried before this time
	// failed: member index -> given no start before this time. A host
	// whose executor failed may still take diffs, and a delivery that
	// lands must not make it the next start's executor at once.
	failed []time.Time
}

// courierConfig is what a courier is built from, besides its members and
// the parts it hands answers to.
type courierConfig struct {
	snap        *sessionpb.EscrowSnapshot
	peers       *hostapi.Client
	state       *State
	log         *slog.Logger
	ctx         context.Context
	hostTimeout time.Duration
	hold        time.Duration // Config.HoldFor
}

func newCourier(c courierConfig, members []*member, sigs *signatures, in *intake) *courier {
	return &courier{
		escrow: c.snap.EscrowId, members: members, peers: c.peers, state: c.state, sigs: sigs, in: in, log: c.log,
		ctx: c.ctx, hostTimeout: c.hostTimeout, holdFor: holdFor(c.snap, c.hold), held: heldAtMost(c.snap), noHold: c.hold < 0,
		acked: make([]uint64, len(members)), down: make([]time.Time, len(members)), failed: make([]time.Time, len(members)),
	}
}

// memberOf is the index of the member holding slot.
func (c *courier) memberOf(slot uint32) int {
	for i, m := range c.members {
		for _, s := range m.slots {
			if s == slot {
				return i
			}
		}
	}
	return -1 // cannot happen: every slot has a member
}

// assumeAcked records that every member holds the diffs up to nonce: a
// restart's optimistic view; hosts that are behind answer 409 and are
// replayed.
func (c *courier) assumeAcked(nonce uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.acked {
		c.acked[i] = nonce
	}
}

// isDown reports whether member i is being skipped.
func (c *courier) isDown(i int, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.downLocked(i, now)
}

func (c *courier) downLocked(i int, now time.Time) bool {
	return now.Before(c.upLocked(i))
}

// upLocked is when member i is next given a start.
func (c *courier) upLocked(i int) time.Time {
	if c.failed[i].After(c.down[i]) {
		return c.failed[i]
	}
	return c.down[i]
}

// markDown makes the next starts skip the host at url for a while: its
// executor failed one. Deliveries still go to it.
func (c *courier) markDown(url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.members {
		if m.url == url {
			c.failed[i] = time.Now().Add(downFor)
		}
	}
}

// upAt is when the first member that is down now will be tried again;
// zero while some member is up.
func (c *courier) upAt(now time.Time) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	var first time.Time
	for i := range c.members {
		if !c.downLocked(i, now) {
			return time.Time{}
		}
		if up := c.upLocked(i); first.IsZero() || up.Before(first) {
			first = up
		}
	}
	return first
}

// tryAll forgets which members are down: the next delivery tries everyone.
func (c *courier) tryAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.down)
	clear(c.failed)
}

// heldAt asks member i for the diff it stores at nonce, and returns it
// and whether it stores one there. A host that has just started is asked
// again until its storage is ready or the host timeout ends.
func (c *courier) heldAt(ctx context.Context, i int, nonce uint64) ([]byte, bool, error) {
	m := c.members[i]
	ctx, cancel := context.WithTimeout(ctx, c.hostTimeout)
	defer cancel()
	held, err := c.peers.Diffs(ctx, m.url, m.addr, c.escrow, nonce, 1)
	for hostapi.IsInitializing(err) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
			held, err = c.peers.Diffs(ctx, m.url, m.addr, c.escrow, nonce, 1)
		}
	}
	if err != nil {
		return nil, false, err
	}
	if len(held) == 0 || held[0].Nonce != nonce {
		return nil, false, nil
	}
	return held[0].Data, true, nil
}

// newDelivery is diff nonce, on its way to no member yet.
func (c *courier) newDelivery(nonce uint64, root [32]byte, raw []byte, reqs map[uint64]executor.Request) *delivery {
	d := &delivery{nonce: nonce, root: root, raw: raw, reqs: reqs, done: make([]chan error, len(c.members))}
	for i := range d.done {
		d.done[i] = make(chan error, 1)
	}
	return d
}

// sendFirst queues d for member i, its executor, at once: the app waits
// for that member, not for the others.
func (c *courier) sendFirst(i int, d *delivery) {
	if c.enqueue(i, d, true) {
		// The executor's delivery, just started, takes this thread until
		// its request is on the wire; what the caller does next comes
		// after it.
		runtime.Gosched()
	}
}

// sendRest queues d for every member but skip (-1: none). They hold it
// (outbox) unless urgent: the caller waits for every member.
func (c *courier) sendRest(d *delivery, skip int, urgent bool) {
	for i := range c.members {
		if i != skip {
			c.enqueue(i, d, urgent || c.noHold)
		}
	}
}

// broadcast sends diff nonce, as the state file holds it, to every member
// at once, its executor first (exec; -1 if it starts nothing), and waits
// for their answers, or for ctx to end.
func (c *courier) broadcast(ctx context.Context, nonce uint64, raw []byte, reqs map[uint64]executor.Request, exec int) {
	var d sessionpb.Diff
	if err := d.Unmarshal(raw); err != nil {
		c.log.Error("stored diff does not decode", "escrow", c.escrow, "nonce", nonce, "err", err)
		return
	}
	var root [32]byte
	copy(root[:], d.PostStateRoot)
	sent := c.newDelivery(nonce, root, raw, reqs)
	if exec >= 0 {
		c.sendFirst(exec, sent)
	}
	c.sendRest(sent, exec, true)
	sent.waitAll(ctx)
}

// enqueue queues d for member i, and reports whether that started its
// outbox's goroutine. A diff that is not urgent is held while fewer than
// c.held wait.
func (c *courier) enqueue(i int, d *delivery, urgent bool) bool {
	out := &c.members[i].out
	out.mu.Lock()
	defer out.mu.Unlock()
	out.queue = append(out.queue, d)
	if urgent {
		out.urgentTo = max(out.urgentTo, d.nonce)
	}
	if out.running {
		return false // the running goroutine sends it, or holds it
	}
	if !out.ready(c.held) {
		c.holdLocked(i)
		return false
	}
	c.startDrainLocked(i)
	return true
}

// holdLocked arms member i's hold timer, unless it is armed. Call with its
// outbox's mu held.
func (c *courier) holdLocked(i int) {
	out := &c.members[i].out
	if out.hold == nil {
		out.hold = time.AfterFunc(c.holdFor, func() { c.release(i) })
	}
}

// release sends member i's held diffs: their hold ended.
func (c *courier) release(i int) {
	out := &c.members[i].out
	out.mu.Lock()
	defer out.mu.Unlock()
	out.hold = nil
	if len(out.queue) == 0 {
		return
	}
	out.urgentTo = max(out.urgentTo, out.queue[len(out.queue)-1].nonce)
	if !out.running {
		c.startDrainLocked(i)
	}
}

// sendHeld sends every member its held diffs now, and waits until each
// outbox is empty or ctx ends.
func (c *courier) sendHeld(ctx context.Context) {
	for i := range c.members {
		c.release(i)
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for !c.idle() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// idle reports whether every outbox is empty and stopped.
func (c *courier) idle() bool {
	for i := range c.members {
		out := &c.members[i].out
		out.mu.Lock()
		busy := out.running || len(out.queue) > 0
		out.mu.Unlock()
		if busy {
			return false
		}
	}
	return true
}

// startDrainLocked starts member i's outbox goroutine. Call with its mu
// held.
func (c *courier) startDrainLocked(i int) {
	out := &c.members[i].out
	if out.hold != nil {
		out.hold.Stop()
		out.hold = nil
	}
	out.running = true
	go c.drainOutbox(i)
}

// drainOutbox delivers member i's queued diffs, as runs in nonce order,
// while they are ready to go; held ones wait for their timer.
func (c *courier) drainOutbox(i int) {
	for {
		run := c.nextRun(i)
		if run == nil {
			return
		}
		txs, err := c.deliver(i, run)
		for _, d := range run {
			d.done[i] <- err
		}
		c.in.admit(i, txs) // after the answer: a request may be waiting for it
	}
}

// nextRun takes the run member i's outbox sends next, or stops its
// goroutine (nil) when nothing is ready; held diffs wait for their timer.
func (c *courier) nextRun(i int) []*delivery {
	out := &c.members[i].out
	out.mu.Lock()
	defer out.mu.Unlock()
	if !out.ready(c.held) {
		out.running = false
		if len(out.queue) > 0 {
			c.holdLocked(i)
		}
		return nil
	}
	n := min(len(out.queue), hostapi.MaxDiffsPerDelivery)
	run := append([]*delivery(nil), out.queue[:n]...)
	clear(out.queue[:n])
	out.queue = out.queue[n:]
	return run
}

// deliver brings member i up to the last diff of run, and returns the txs
// its mempool answered, as they came. A member that missed earlier diffs
// (it was down) is sent them first. Its state signatures over the last
// diff's root go to the collector.
func (c *courier) deliver(i int, run []*delivery) ([][]byte, error) {
	m := c.members[i]
	d := run[len(run)-1]
	c.mu.Lock()
	if time.Now().Before(c.down[i]) {
		c.mu.Unlock()
		return nil, errSkipped
	}
	from := c.acked[i] + 1
	c.mu.Unlock()
	resp, err := c.sendTo(c.ctx, m, from, run)
	var he *hostapi.Error
	if errors.As(err, &he) && he.Status == http.StatusConflict && from > 1 {
		// The host is behind what this gateway believed (it lost its
		// disk, or the gateway restarted): replay from the start; diffs
		// it has are idempotent no-ops.
		resp, err = c.sendTo(c.ctx, m, 1, run)
	}
	if err != nil {
		if hostapi.IsUnreachable(err) {
			wait := downFor
			if hostapi.IsStorageFailing(err) {
				wait = storageDownFor
			}
			c.mu.Lock()
			c.down[i] = time.Now().Add(wait)
			c.mu.Unlock()
		}
		if c.ctx.Err() == nil {
			c.log.Warn("host did not take diff", "escrow", c.escrow, "nonce", d.nonce, "host", m.url, "err", err)
		}
		return nil, err
	}
	c.mu.Lock()
	c.down[i] = time.Time{}
	c.acked[i] = max(c.acked[i], resp.Nonce)
	c.mu.Unlock()
	c.sigs.absorb(d.nonce, resp.Signatures)
	return resp.Mempool, nil
}

// sendTo brings member m from nonce from up to the last diff of run, in as
// few deliveries as the limits allow, and returns the last answer. Diffs
// before run come from the state file.
func (c *courier) sendTo(ctx context.Context, m *member, from uint64, run []*delivery) (*hostapi.DiffResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.hostTimeout)
	defer cancel()
	p := &post{c: c, ctx: ctx, m: m, first: from, runFrom: run[0].nonce}
	for from < run[0].nonce {
		back, err := c.state.Diffs(ctx, c.escrow, from, hostapi.MaxDiffsPerDelivery)
		if err != nil {
			return nil, err
		}
		for _, sd := range back {
			if sd.Nonce >= run[0].nonce {
				break
			}
			body, err := hostapi.EncodeDiff(sd.Data, sd.Requests)
			if err != nil {
				return nil, err
			}
			if err := p.add(body); err != nil {
				return nil, err
			}
			from = sd.Nonce + 1
		}
		if len(back) == 0 {
			break
		}
	}
	for _, d := range run {
		body, err := d.encoded()
		if err != nil {
			return nil, err
		}
		if err := p.add(body); err != nil {
			return nil, err
		}
	}
	return p.send()
}

// post gathers consecutive diff bodies into deliveries to one member, each
// within hostapi.MaxDiffsPerDelivery diffs and maxRunBytes.
type post struct {
	c       *courier
	ctx     context.Context
	m       *member
	bodies  [][]byte
	size    int
	first   uint64 // the first nonce in bodies
	runFrom uint64 // the first nonce of the run being delivered
}

// add appends body, sending what is gathered first if body would not fit.
func (p *post) add(body []byte) error {
	if len(p.bodies) > 0 && (len(p.bodies) == hostapi.MaxDiffsPerDelivery || p.size+len(body) > maxRunBytes) {
		if _, err := p.send(); err != nil {
			return err
		}
	}
	p.bodies, p.size = append(p.bodies, body), p.size+len(body)
	return nil
}

// send delivers what is gathered, as one diff or one run.
func (p *post) send() (*hostapi.DiffResponse, error) {
	body := p.bodies[0]
	if len(p.bodies) > 1 {
		body = hostapi.EncodeRun(p.bodies)
	}
	resp, err := p.c.peers.PostDiffs(p.ctx, p.m.url, p.m.addr, p.c.escrow, body)
	if err != nil && p.first < p.runFrom {
		err = fmt.Errorf("catching up from diff %d: %w", p.first, err)
	}
	p.first += uint64(len(p.bodies))
	p.bodies, p.size = p.bodies[:0], 0
	return resp, err
}

// collect reads every reachable member's mempool into the intake.
func (c *courier) collect(ctx context.Context) {
	var wg sync.WaitGroup
	now := time.Now()
	for i, m := range c.members {
		if c.isDown(i, now) {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, c.hostTimeout)
			defer cancel()
			txs, err := c.peers.Mempool(ctx, m.url, m.addr, c.escrow)
			if err != nil {
				return
			}
			c.in.admit(i, txs)
		}()
	}
	wg.Wait()
}
