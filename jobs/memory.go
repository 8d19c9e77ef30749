package jobs

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"sync"
	"time"
)

// memory keeps the jobs of volatile kinds (Options.Volatile) in the
// process: a Driver with no database, so its writes cost no commit and
// its jobs die with the process. The Queue puts it beside its driver and
// sends each call to the side that holds the job; the rules are the
// Driver contract's, so a volatile job behaves as a durable one until the
// process ends.
type memory struct {
	mu   sync.Mutex
	jobs map[string]*Job
	// ready holds the jobs in state Ready, by id: a claim looks at these
	// only, not at the finished jobs kept for their Lifetime (a day of a
	// host's inferences).
	ready map[string]*Job
}

func newMemory() *memory { return &memory{jobs: map[string]*Job{}, ready: map[string]*Job{}} }

// taken reports whether the job is kept here and no longer ready: a
// claim, a finish or a fail took it.
func (m *memory) taken(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	j, ok := m.jobs[id]
	return ok && j.State != Ready
}

// clone is j with slices of its own, as the Driver contract hands out.
func (j Job) clone() Job {
	j.Input = bytes.Clone(j.Input)
	j.Result = bytes.Clone(j.Result)
	return j
}

// has reports whether the job is kept here.
func (m *memory) has(id string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.jobs[id]
	return ok
}

// Insert implements Driver.
func (m *memory) Insert(_ context.Context, j Job) (Job, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cur, ok := m.jobs[j.ID]; ok {
		return cur.clone(), false, nil
	}
	stored := j.clone()
	m.jobs[j.ID] = &stored
	if stored.State == Ready {
		m.ready[j.ID] = &stored
	}
	return stored.clone(), true, nil
}

// Claim implements Driver: the ready jobs in claim order, one to each
// holder.
func (m *memory) Claim(_ context.Context, p ClaimParams) ([]Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ready []*Job
	for _, j := range m.ready {
		if len(p.Kinds) == 0 || slices.Contains(p.Kinds, j.Kind) {
			ready = append(ready, j)
		}
	}
	slices.SortFunc(ready, func(a, b *Job) int {
		return cmp.Or(cmp.Compare(Priority(a.Kind), Priority(b.Kind)), a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID))
	})
	var claimed []Job
	for i, h := range p.Holders {
		if i == len(ready) {
			break
		}
		j := ready[i]
		delete(m.ready, j.ID)
		j.State, j.Attempt, j.Worker, j.LeaseToken = Running, j.Attempt+1, h.Worker, h.Token
		j.LeaseExpires, j.Started, j.Heartbeat = p.Expires, p.Now, p.Now
		claimed = append(claimed, j.clone())
	}
	return claimed, nil
}

// held returns the job running under lease, or nil.
func (m *memory) held(l Lease) *Job {
	j := m.jobs[l.JobID]
	if j == nil || j.State != Running || j.Attempt != l.Attempt || j.LeaseToken != l.Token {
		return nil
	}
	return j
}

// current is the job as it is now, for the Queue to explain a refusal.
func (m *memory) current(id string) *Job {
	j, ok := m.jobs[id]
	if !ok {
		return nil
	}
	c := j.clone()
	return &c
}

// Heartbeat implements Driver.
func (m *memory) Heartbeat(_ context.Context, l Lease, now, expires time.Time) (bool, *Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	j := m.held(l)
	if j == nil {
		return false, m.current(l.JobID), nil
	}
	j.Heartbeat, j.LeaseExpires = now, expires
	return true, nil, nil
}

// Finish implements Driver.
func (m *memory) Finish(_ context.Context, fs []FinishParams) ([]Fenced, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Fenced, len(fs))
	for i, f := range fs {
		j := m.held(f.Lease)
		if j == nil {
			out[i] = Fenced{Current: m.current(f.Lease.JobID)}
			continue
		}
		o := f.Outcome
		j.State, j.Result, j.ErrorClass, j.Error = o.State, bytes.Clone(o.Result), o.ErrorClass, o.Error
		j.Finished, j.LeaseExpires = o.Now, time.Time{}
		out[i] = Fenced{Applied: true, Current: m.current(j.ID)}
	}
	return out, nil
}

// Rescue implements Driver. The jobs are this process's alone, so no
// other queue's pass can overlap and none is skipped.
func (m *memory) Rescue(_ context.Context, p RescueParams) (RescueReport, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var expired []*Job
	var r RescueReport
	for id, j := range m.jobs {
		switch {
		case j.State == Running && !j.LeaseExpires.After(p.Now):
			expired = append(expired, j)
		case (j.State == Succeeded || j.State == Failed) && !j.Finished.After(p.FinishedBefore):
			delete(m.jobs, id)
			r.Expired++
		}
	}
	slices.SortFunc(expired, func(a, b *Job) int {
		return cmp.Or(a.LeaseExpires.Compare(b.LeaseExpires), cmp.Compare(a.ID, b.ID))
	})
	for _, j := range expired {
		ref := JobRef{ID: j.ID, Kind: j.Kind}
		if p.Retry(j.Attempt) {
			j.State, j.Worker, j.LeaseToken, j.LeaseExpires = Ready, "", "", time.Time{}
			m.ready[j.ID] = j
			r.Retried = append(r.Retried, ref)
		} else {
			j.State, j.LeaseExpires, j.Finished = Failed, time.Time{}, p.Now
			j.ErrorClass, j.Error = ErrorClassLeaseExpired, LeaseExpiredMessage(j.Attempt)
			r.Failed = append(r.Failed, ref)
		}
	}
	return r, nil
}

// Get implements Driver.
func (m *memory) Get(_ context.Context, id string) (Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if j := m.current(id); j != nil {
		return *j, nil
	}
	return Job{}, &NotFoundError{IDs: []string{id}}
}

// List implements Driver.
func (m *memory) List(_ context.Context, f Filter) ([]Job, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	states := f.States()
	out := []Job{}
	for _, j := range m.jobs {
		if !slices.Contains(states, j.State) {
			continue
		}
		c := j.clone()
		if !f.Detail {
			c.Input, c.Result = nil, nil
		}
		out = append(out, c)
	}
	sortByCreated(out)
	return out, nil
}

// sortByCreated puts jobs in List's order: oldest first, then by id.
func sortByCreated(js []Job) {
	slices.SortFunc(js, func(a, b Job) int { return cmp.Or(a.Created.Compare(b.Created), cmp.Compare(a.ID, b.ID)) })
}

// Reset implements Driver.
func (m *memory) Reset(_ context.Context, ids []string) error {
	return m.alongside(ids, CheckReset, nil, m.reset)
}

// Remove implements Driver.
func (m *memory) Remove(_ context.Context, ids []string) error {
	return m.alongside(ids, CheckFound, nil, m.remove)
}

// alongside checks and applies a change to ids of which some are kept
// here and the rest (if others is not nil) by the durable driver: the ids
// kept here are checked first, then others changes the rest, then the
// change applies here. The lock is held throughout, so it is all or
// nothing as long as others is.
func (m *memory) alongside(ids []string, check func([]string, map[string]State) error, others func(rest []string) error, apply func(mine []string)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	found := map[string]State{}
	var mine, rest []string
	for _, id := range ids {
		if j, ok := m.jobs[id]; ok {
			found[id] = j.State
			mine = append(mine, id)
		} else {
			rest = append(rest, id)
		}
	}
	if others == nil {
		mine = ids
	}
	if err := check(mine, found); err != nil {
		return err
	}
	if len(rest) > 0 && others != nil {
		if err := others(rest); err != nil {
			return err
		}
	}
	apply(mine)
	return nil
}

func (m *memory) reset(ids []string) {
	for _, id := range ids {
		j := m.jobs[id]
		*j = Job{ID: j.ID, Kind: j.Kind, Input: j.Input, State: Ready, Created: j.Created}
		m.ready[id] = j
	}
}

func (m *memory) remove(ids []string) {
	for _, id := range ids {
		delete(m.jobs, id)
		delete(m.ready, id)
	}
}

// RemoveAll implements Driver.
func (m *memory) RemoveAll(context.Context) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.jobs)
	clear(m.jobs)
	clear(m.ready)
	return n, nil
}

// Count implements Driver.
func (m *memory) Count(context.Context) (map[State]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := map[State]int{}
	for _, j := range m.jobs {
		n[j.State]++
	}
	return n, nil
}

// Close implements Driver.
func (m *memory) Close() error { return nil }
