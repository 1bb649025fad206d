//! [`Core::check_invariants`]: every book recomputed from first principles and compared with
//! the incremental one (agents, offers, frameworks, tasks), as the crate documentation lists
//! them. Used by the tests after every step.

use std::collections::BTreeMap;

use super::{Agent, AgentMode, Core, Framework, Resources};

impl Core {
    /// Recomputes every book from first principles and compares it with the incremental one.
    /// Returns a description of the first difference.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut cluster = Resources::new();
        for agent in self.agents.values() {
            self.check_agent(agent)?;
            if agent.reachable() {
                cluster.add_scalars(&agent.total);
            }
        }
        if cluster != self.cluster_total {
            return Err(format!(
                "cluster total {} != sum of reachable agents {cluster}",
                self.cluster_total
            ));
        }
        self.check_offers()?;
        for fw in self.frameworks.values() {
            self.check_framework(fw)?;
        }
        self.check_tasks()
    }

    /// An agent's books: allocated (its tasks), offered (its offers, never overlapping),
    /// within its total, free the remainder, and whether it is offerable.
    fn check_agent(&self, agent: &Agent) -> Result<(), String> {
        let allocated = self.agent_allocated(agent)?;
        let offered = self.agent_offered(agent, &allocated)?;
        if !agent.total.contains(&allocated.plus(&offered)) {
            return Err(format!(
                "agent {}: allocated {allocated} + offered {offered} exceed total {}",
                agent.id, agent.total
            ));
        }
        if !agent.total.contains(&agent.dynamic) {
            return Err(format!(
                "agent {}: dynamic reservations {} are not within total {}",
                agent.id, agent.dynamic, agent.total
            ));
        }
        let used = allocated.plus(&offered);
        let free = agent.total.minus(&used);
        if free != agent.free {
            return Err(format!(
                "agent {} books free {} but total - allocated - offered is {free}",
                agent.id, agent.free
            ));
        }
        if free.plus(&used) != agent.total {
            return Err(format!(
                "agent {}: allocated {allocated} + offered {offered} + free {free} != total {}",
                agent.id, agent.total
            ));
        }
        let offerable =
            agent.conn().is_some() && agent.mode == AgentMode::Active && free.is_allocatable();
        if offerable != self.offerable[agent.slot] {
            return Err(format!(
                "agent {} offerable is {offerable} but the index says otherwise",
                agent.id
            ));
        }
        Ok(())
    }

    /// The sum of the agent's tasks, checked against its books.
    fn agent_allocated(&self, agent: &Agent) -> Result<Resources, String> {
        let mut allocated = Resources::new();
        for key in &agent.tasks {
            let task = self
                .tasks
                .get(key)
                .ok_or_else(|| format!("agent {} lists unknown task {key:?}", agent.id))?;
            if task.agent_id != agent.id {
                return Err(format!("task {key:?} is on two agents"));
            }
            allocated.add(&task.resources);
        }
        if allocated != agent.allocated {
            return Err(format!(
                "agent {} books allocated {} but its tasks use {allocated}",
                agent.id, agent.allocated
            ));
        }
        Ok(allocated)
    }

    /// The sum of the agent's offers, checked against its books; no offer overlaps another
    /// or what is `allocated`.
    fn agent_offered(&self, agent: &Agent, allocated: &Resources) -> Result<Resources, String> {
        let mut offered = Resources::new();
        for id in &agent.offers {
            let offer = self
                .offers
                .get(id)
                .ok_or_else(|| format!("agent {} names missing offer {id}", agent.id))?;
            if offer.agent != agent.slot {
                return Err(format!("offer {id} is on another agent"));
            }
            if !offered.items_disjoint(&offer.resources)
                || !allocated.items_disjoint(&offer.resources)
            {
                return Err(format!(
                    "offer {id} overlaps another offer on agent {}",
                    agent.id
                ));
            }
            offered.add(&offer.resources);
        }
        if offered != agent.offered {
            return Err(format!(
                "agent {} books offered {} but its offers hold {offered}",
                agent.id, agent.offered
            ));
        }
        Ok(offered)
    }

    /// Every offer is among its agent's and its framework's.
    fn check_offers(&self) -> Result<(), String> {
        for (id, offer) in &self.offers {
            let agent = self
                .agents
                .slots
                .get(offer.agent)
                .ok_or_else(|| format!("offer {id} is on unknown agent"))?;
            if !agent.offers.contains(id) {
                return Err(format!("offer {id} is not among its agent's offers"));
            }
            let fw = self
                .frameworks
                .get(&*offer.framework_id)
                .ok_or_else(|| format!("offer {id} is for an unknown framework"))?;
            if !fw.offers.contains(id) {
                return Err(format!("offer {id} is missing from its framework"));
            }
        }
        Ok(())
    }

    /// A framework's books: allocated (its reachable tasks), offered (its offers), both per
    /// role; a disconnected framework holds no offers.
    fn check_framework(&self, fw: &Framework) -> Result<(), String> {
        let mut allocated = Resources::new();
        let mut by_role: BTreeMap<String, Resources> = BTreeMap::new();
        for task_id in &fw.tasks {
            let key = (fw.id.clone(), task_id.clone());
            let task = self
                .tasks
                .get(&key)
                .ok_or_else(|| format!("framework {} lists unknown task {task_id}", fw.id))?;
            if !task.unreachable {
                allocated.add_scalars(&task.resources);
                by_role
                    .entry(task.role.clone())
                    .or_default()
                    .add_scalars(&task.resources);
            }
        }
        if allocated != fw.allocated {
            return Err(format!(
                "framework {} books allocated {} but its reachable tasks use {allocated}",
                fw.id, fw.allocated
            ));
        }
        let mut offered = Resources::new();
        for id in &fw.offers {
            let offer = self
                .offers
                .get(id)
                .ok_or_else(|| format!("framework {} names missing offer {id}", fw.id))?;
            offered.add_scalars(&offer.resources);
            by_role
                .entry(offer.role.to_string())
                .or_default()
                .add_scalars(&offer.resources);
        }
        by_role.retain(|_, r| !r.is_empty());
        if by_role != fw.by_role {
            return Err(format!(
                "framework {} books per role {:?} but its tasks and offers hold {by_role:?}",
                fw.id, fw.by_role
            ));
        }
        if offered != fw.offered {
            return Err(format!(
                "framework {} books offered {} but its offers hold {offered}",
                fw.id, fw.offered
            ));
        }
        if fw.conn.is_none() && !fw.offers.is_empty() {
            return Err(format!("disconnected framework {} holds offers", fw.id));
        }
        Ok(())
    }

    /// Every active task is its framework's and not terminal.
    fn check_tasks(&self) -> Result<(), String> {
        for (key, task) in &self.tasks {
            let fw = self
                .frameworks
                .get(&key.0)
                .ok_or_else(|| format!("task {key:?} of unknown framework"))?;
            if !fw.tasks.contains(&key.1) {
                return Err(format!("task {key:?} missing from its framework"));
            }
            if task.state.is_terminal() {
                return Err(format!("terminal task {key:?} is still active"));
            }
        }
        Ok(())
    }
}
