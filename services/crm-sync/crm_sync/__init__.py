"""crm-sync: makes the CRM reflect every conversation of the open lines."""
